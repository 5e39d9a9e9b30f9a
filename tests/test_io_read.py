import errno
import os
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from coder.errors import InputFileError, ModelBundleError, UsageError
from coder.io.read import bound_notes, check_unchanged, iter_batches, plan_inputs, read_saved, resolve_inputs
from coder.schema import NOTE_ID, TEXT, TEXT_ES
from standin import write_notes


def _notes(path: Path, n: int, *, start: int = 0) -> Path:
    pl.DataFrame({NOTE_ID: [f"n{i}" for i in range(start, start + n)], TEXT: ["fever"] * n}).write_parquet(path)
    return path


def test_resolve_inputs_file_directory_and_glob(tmp_path):
    a = _notes(tmp_path / "a.parquet", 2)
    b = _notes(tmp_path / "b.parquet", 2)
    (tmp_path / "readme.txt").write_text("not a note")
    assert resolve_inputs(a).files == (a,)
    assert resolve_inputs(tmp_path).files == (a, b)
    assert resolve_inputs(tmp_path).skipped == (tmp_path / "readme.txt",)
    assert resolve_inputs(str(tmp_path / "*.parquet")).files == (a, b)


def test_resolve_inputs_gives_absolute_paths(tmp_path, monkeypatch):
    _notes(tmp_path / "a.parquet", 1)
    monkeypatch.chdir(tmp_path)
    assert resolve_inputs("a.parquet").files == resolve_inputs(".").files == (tmp_path / "a.parquet",)


@pytest.mark.parametrize(
    ("name", "match"),
    [("missing.parquet", "no such file"), ("nothing-*.parquet", "no file matches"),
     ("empty", "no input notes: the folder holds no"), ("only-hidden", r"no \*.parquet file \(2 other files, none read\)")],
    ids=["missing-path", "empty-glob", "empty-folder", "only-skipped-files"],
)
def test_resolve_inputs_refuses_missing(tmp_path, name, match):
    (tmp_path / "empty").mkdir()
    (tmp_path / "only-hidden").mkdir()
    _notes(tmp_path / "only-hidden" / ".notes.parquet", 1)
    (tmp_path / "only-hidden" / "notes.csv").write_text("note_id,text\n")
    with pytest.raises(InputFileError, match=match):
        resolve_inputs(tmp_path / name)


def test_files_without_rows_are_no_notes(tmp_path):
    _notes(tmp_path / "a.parquet", 0)
    _notes(tmp_path / "b.parquet", 0)
    with pytest.raises(InputFileError, match="no input notes: 2 parquet files, all without rows"):
        plan_inputs(tmp_path, text_columns=(TEXT,))


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
    elif kind == "repeated-column":
        pq.write_table(pa.Table.from_arrays([pa.array(["n1"]), pa.array(["a"]), pa.array(["b"])], names=[NOTE_ID, TEXT, TEXT]), path)
    return path


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("not-parquet", r"bad\.parquet: not a readable parquet file"),
        ("truncated", r"bad\.parquet: not a readable parquet file"),
        ("missing-text", r"bad\.parquet: missing text column 'text'"),
        ("numeric-id", r"bad\.parquet: id column 'note_id' is int64, expected a string"),
        ("numeric-text", r"bad\.parquet: text column 'text' is double, expected a string"),
        ("repeated-column", r"bad\.parquet: the notes have 2 columns named 'text'; rename them"),
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


def test_the_id_and_the_text_must_be_different_columns(tmp_path):
    path = _notes(tmp_path / "a.parquet", 1)
    with pytest.raises(UsageError, match="the id column and the text column are both 'text'"):
        plan_inputs(path, id_column=TEXT, text_columns=(TEXT,))


def test_a_column_read_as_the_id_or_the_main_text_is_no_secondary_text(tmp_path):
    path = tmp_path / "a.parquet"
    pl.DataFrame({NOTE_ID: ["n1"], TEXT: ["x"], TEXT_ES: ["y"]}).write_parquet(path)
    plan = plan_inputs(path, text_columns=(TEXT, TEXT_ES), primary_column=TEXT_ES)
    assert (plan.columns, plan.skipped_columns) == ({TEXT_ES: TEXT}, (TEXT_ES,))


def test_values_that_are_not_utf8_read_as_null_and_mark_their_rows(tmp_path):
    path = write_notes(tmp_path / "a.parquet", ["n0", b"n\xff", "n2", "n3"], ["ok", "ok", b"\xc3(", None], row_group_size=2)
    batches = list(iter_batches(plan_inputs(path, text_columns=(TEXT,)), batch_size=2))
    assert [b.frame.rows() for b in batches] == [[("n0", "ok"), (None, "ok")], [("n2", None), ("n3", None)]]
    assert [b.invalid_utf8 for b in batches] == [frozenset({1}), frozenset({0})]


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


@pytest.mark.parametrize("link", ["loop", "broken"])
def test_a_parquet_name_in_the_dump_that_is_no_file_is_one_error_naming_it(tmp_path, link):
    _notes(tmp_path / "a.parquet", 1)
    (tmp_path / "b.parquet").symlink_to(tmp_path / ("b.parquet" if link == "loop" else "gone.parquet"))
    with pytest.raises(InputFileError, match=f"{tmp_path / 'b.parquet'}: not a file \\(a broken symbolic link or a link loop\\)"):
        resolve_inputs(tmp_path)


def test_a_folder_of_the_dump_that_cannot_be_listed_is_one_error_naming_it(tmp_path, monkeypatch):
    _notes(tmp_path / "a.parquet", 1)
    (tmp_path / "site=B").mkdir()
    scandir = os.scandir

    def refused(path):  # a folder root cannot be kept out of by chmod: refuse it here
        if str(path).endswith("site=B"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refused)
    with pytest.raises(InputFileError, match=r"site=B: cannot list this folder of the dump \(Permission denied\)"):
        resolve_inputs(tmp_path)


@pytest.mark.parametrize(("change", "match"), [
    (lambda path: _notes(path, 3), "changed during the run"),
    (lambda path: os.utime(path, ns=(0, 0)), "changed during the run"),
    (lambda path: path.unlink(), "vanished during the run"),
], ids=["rewritten", "touched", "removed"])
def test_a_file_that_changed_since_it_was_planned_is_refused_when_read(tmp_path, change, match):
    path = _notes(tmp_path / "a.parquet", 2)
    plan = plan_inputs(path, text_columns=(TEXT,))
    check_unchanged(plan.files[0])
    change(path)
    with pytest.raises(InputFileError, match=f"{path}: the input file {match}"):
        list(iter_batches(plan, batch_size=1))


def test_bound_notes_cuts_every_text_column_and_names_the_notes_cut():
    notes = pl.DataFrame({NOTE_ID: ["a", "b", "c"], TEXT: ["fever", "ab" * 10, None], TEXT_ES: ["fiebre", "x", "ñ" * 7]})
    cut, ids = bound_notes(notes, columns=(TEXT, TEXT_ES, "absent"), max_chars=6)
    assert ids == ("b", "c")
    assert cut.rows() == [("a", "fever", "fiebre"), ("b", "ababab", "x"), ("c", None, "ñ" * 6)]
    assert bound_notes(notes, columns=(TEXT,), max_chars=20) == (notes, ())


def test_read_saved_reads_a_model_file_whole(tmp_path):
    frame = pl.DataFrame({"term": ["asthma", "fever"], "code": ["J45", "R50"], "weight": [1.0, 0.5]})
    frame.write_parquet(tmp_path / "terms.parquet")
    assert read_saved(tmp_path / "terms.parquet").equals(frame)


@pytest.mark.parametrize("broken", [None, b"not parquet"], ids=["missing", "not-parquet"])
def test_read_saved_a_missing_or_broken_model_file_is_a_bundle_error_naming_it(tmp_path, broken):
    path = tmp_path / "prior.parquet"
    if broken is not None:
        path.write_bytes(broken)
    with pytest.raises(ModelBundleError, match=rf"{path}: cannot read this parquet file of the model folder \(\w+\); copy"):
        read_saved(path)
