from pathlib import Path

import polars as pl

from coder.io.screen import RowScreen, quarantine_path, unprocessable
from coder.io.read import NoteBatch
from coder.schema import NOTE_ID, QUARANTINE_SCHEMA, TEXT, QuarantineReason


def _batch(ids, texts, *, index=0, first_row=0, file="notes.parquet"):
    frame = pl.DataFrame({NOTE_ID: ids, TEXT: texts}, schema={NOTE_ID: pl.String, TEXT: pl.String})
    return NoteBatch(index=index, file=Path(file), first_row=first_row, frame=frame)


def test_each_bad_row_gets_its_reason_and_row_number():
    batch = _batch(
        ["a", None, "b", "a", "c", "d", "e"],
        ["fever", "cough", None, "fever again", "", "  \n\t", "ok"],
        first_row=10,
    )
    good, bad = RowScreen().split(batch, text_column=TEXT)
    assert good.get_column(NOTE_ID).to_list() == ["a", "e"]
    assert good.get_column("row").to_list() == [10, 16]
    assert bad.schema == QUARANTINE_SCHEMA
    assert bad.rows() == [
        (None, 11, "notes.parquet", QuarantineReason.NULL_NOTE_ID),
        ("b", 12, "notes.parquet", QuarantineReason.NULL_TEXT),
        ("a", 13, "notes.parquet", QuarantineReason.DUPLICATE_NOTE_ID),
        ("c", 14, "notes.parquet", QuarantineReason.EMPTY_TEXT),
        ("d", 15, "notes.parquet", QuarantineReason.EMPTY_TEXT),
    ]


def test_ids_are_trimmed_and_bad_utf8_blank_ids_come_first():
    batch = _batch([" n1", "n1", "n1 ", "", "  ", None, "n2"], ["a", "b", "c", "d", "e", "f", None])
    batch = NoteBatch(index=0, file=batch.file, first_row=0, frame=batch.frame, invalid_utf8=frozenset({5, 6}))
    good, bad = RowScreen().split(batch, text_column=TEXT)
    assert good.get_column(NOTE_ID).to_list() == ["n1"]
    assert bad.select(NOTE_ID, "reason").rows() == [
        ("n1", QuarantineReason.DUPLICATE_NOTE_ID),
        ("n1", QuarantineReason.DUPLICATE_NOTE_ID),
        ("", QuarantineReason.BLANK_NOTE_ID),
        ("", QuarantineReason.BLANK_NOTE_ID),
        (None, QuarantineReason.INVALID_UTF8),
        ("n2", QuarantineReason.INVALID_UTF8),
    ]


def test_duplicates_are_caught_across_batches_and_files():
    screen = RowScreen()
    screen.split(_batch(["a", "b"], ["x", ""]), text_column=TEXT)
    good, bad = screen.split(_batch(["b", "a", "c"], ["y", "z", "w"], index=1, file="other.parquet"), text_column=TEXT)
    assert good.get_column(NOTE_ID).to_list() == ["c"]
    assert bad.select(NOTE_ID, "file", "reason").rows() == [
        ("b", "other.parquet", QuarantineReason.DUPLICATE_NOTE_ID),
        ("a", "other.parquet", QuarantineReason.DUPLICATE_NOTE_ID),
    ]


def test_unprocessable_rows_keep_their_row_numbers():
    good, _ = RowScreen().split(_batch(["a", "b"], ["x", "y"], first_row=5), text_column=TEXT)
    rows = unprocessable(good, ("b",), file=Path("f.parquet"))
    assert rows.rows() == [("b", 6, "f.parquet", QuarantineReason.UNPROCESSABLE)]


def test_quarantine_path_sits_beside_the_output():
    assert quarantine_path(Path("/x/out.parquet")) == Path("/x/out.quarantine.parquet")
