from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from coder.errors import InputFileError
from coder.io.read import iter_batches, plan_inputs, resolve_inputs
from coder.schema import NOTE_ID, TEXT, TEXT_ES


def _notes(path: Path, n: int, *, start: int = 0) -> Path:
    pl.DataFrame({NOTE_ID: [f"n{i}" for i in range(start, start + n)], TEXT: ["fever"] * n}).write_parquet(path)
    return path


def test_resolve_inputs_file_directory_and_glob(tmp_path):
    a = _notes(tmp_path / "a.parquet", 2)
    b = _notes(tmp_path / "b.parquet", 2)
    (tmp_path / "readme.txt").write_text("not a note")
    assert resolve_inputs(a) == [a]
    assert resolve_inputs(tmp_path) == [a, b]
    assert resolve_inputs(str(tmp_path / "*.parquet")) == [a, b]


@pytest.mark.parametrize(
    ("name", "match"),
    [("missing.parquet", "no such file"), ("nothing-*.parquet", "no file matches")],
    ids=["missing-path", "empty-glob"],
)
def test_resolve_inputs_refuses_missing(tmp_path, name, match):
    with pytest.raises(InputFileError, match=match):
        resolve_inputs(tmp_path / name)


def _write_bad(path: Path, kind: str) -> Path:
    if kind == "not-parquet":
        path.write_text("note_id,text\nn1,fever\n")
    elif kind == "truncated":
        _notes(path, 50)
        path.write_bytes(path.read_bytes()[:-20])
    elif kind == "missing-text":
        pl.DataFrame({NOTE_ID: ["n1"], "body": ["fever"]}).write_parquet(path)
    elif kind == "numeric-id":
        pl.DataFrame({NOTE_ID: [1], TEXT: ["fever"]}).write_parquet(path)
    elif kind == "numeric-text":
        pl.DataFrame({NOTE_ID: ["n1"], TEXT: [3.5]}).write_parquet(path)
    return path


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("not-parquet", r"bad\.parquet: not a readable parquet file"),
        ("truncated", r"bad\.parquet: not a readable parquet file"),
        ("missing-text", r"bad\.parquet: missing text column 'text'"),
        ("numeric-id", r"bad\.parquet: id column 'note_id' is int64, expected a string"),
        ("numeric-text", r"bad\.parquet: text column 'text' is double, expected a string"),
    ],
    ids=lambda v: v if not v.startswith("bad") else None,
)
def test_plan_inputs_names_the_bad_file_and_column(tmp_path, kind, match):
    _notes(tmp_path / "good.parquet", 3)
    _write_bad(tmp_path / "bad.parquet", kind)
    with pytest.raises(InputFileError, match=match):
        plan_inputs(tmp_path, text_columns=(TEXT,))


def test_plan_inputs_skips_a_missing_secondary_column(tmp_path):
    path = _notes(tmp_path / "a.parquet", 3)
    plan = plan_inputs(path, text_columns=(TEXT, TEXT_ES))
    assert plan.columns == {TEXT: TEXT}
    assert plan.skipped_columns == (TEXT_ES,)
    assert plan.total_rows == 3


def test_iter_batches_renames_columns_and_numbers_batches_across_files(tmp_path):
    pl.DataFrame({"id": ["a", "b", "c"], "body": ["x", "y", "z"]}).write_parquet(tmp_path / "1.parquet")
    pl.DataFrame({"id": ["d", "e"], "body": ["u", "v"]}).write_parquet(tmp_path / "2.parquet")
    plan = plan_inputs(tmp_path, id_column="id", text_columns=(TEXT,), primary_column="body")
    batches = list(iter_batches(plan, batch_size=2))
    assert [(b.index, b.file.name, b.first_row, b.frame.height) for b in batches] == [
        (0, "1.parquet", 0, 2),
        (1, "1.parquet", 2, 1),
        (2, "2.parquet", 0, 2),
    ]
    assert batches[0].frame.columns == [NOTE_ID, TEXT]


def test_empty_directory_plans_no_rows(tmp_path):
    plan = plan_inputs(tmp_path, text_columns=(TEXT,))
    assert plan.files == () and plan.total_rows == 0


def test_corruption_inside_a_file_names_the_file_and_row(tmp_path):
    path = tmp_path / "notes.parquet"
    pl.DataFrame({NOTE_ID: [f"n{i}" for i in range(4000)], TEXT: [f"fever {i} " * 20 for i in range(4000)]}).write_parquet(
        path, row_group_size=1000
    )
    data = bytearray(path.read_bytes())
    start = pq.ParquetFile(path).metadata.row_group(2).column(1).data_page_offset
    data[start + 10 : start + 2000] = b"\xab" * 1990  # a damaged page in the third row group
    path.write_bytes(bytes(data))
    plan = plan_inputs(path, text_columns=(TEXT,))
    with pytest.raises(InputFileError, match=r"notes\.parquet: unreadable after row 2000"):
        list(iter_batches(plan, batch_size=500))
