"""Sort out the rows that cannot be coded, with a reason, so that none stops the run or vanishes.

Note ids are trimmed (leading and trailing whitespace) first: ' n1', 'n1' and 'n1 ' are one note.
Rules, first match wins: the id or the text is not valid UTF-8 (the reader marks the row); null
note id; blank note id; note id already seen (earlier in the batch, an earlier batch or an earlier
file: the first occurrence is coded); null primary text; empty or blank primary text. The model
later adds rows with no tokens (``QuarantineReason.UNPROCESSABLE``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path

import polars as pl

from coder.io.read import NoteBatch
from coder.schema import NOTE_ID, QUARANTINE_SCHEMA, QuarantineReason

_ROW = "row"
_REASON = "reason"


def quarantine_path(out: Path) -> Path:
    """``OUT.parquet`` -> ``OUT.quarantine.parquet`` beside it."""
    return out.with_name(f"{out.stem}.quarantine.parquet")


_NONE = pl.DataFrame(schema=QUARANTINE_SCHEMA)


def _quarantine_frame(rows: pl.DataFrame, *, file: Path) -> pl.DataFrame:
    if rows.is_empty():  # the usual case: skip building a frame per batch
        return _NONE
    return rows.select(NOTE_ID, _ROW, pl.lit(str(file)).alias("file"), _REASON).cast(QUARANTINE_SCHEMA)


def note_ids(frame: pl.DataFrame) -> pl.Series:
    """The ``note_id`` column as the run compares and writes it: trimmed."""
    return frame.get_column(NOTE_ID).str.strip_chars()


class RowScreen:
    """Splits batches into codable notes and quarantined rows; remembers note ids across batches.

    ``seen``: ids already met before the first batch given, for a worker that screens one batch of a run.
    """

    def __init__(self, *, seen: Iterable[str] = ()) -> None:
        self._seen: set[str] = set(seen)

    def split(self, batch: NoteBatch, *, text_column: str) -> tuple[pl.DataFrame, pl.DataFrame]:
        """``batch`` -> (codable rows with a ``row`` column, quarantine rows in QUARANTINE_SCHEMA)."""
        ids = note_ids(batch.frame)
        # Membership in the run-wide set is the one per-row Python step: a set lookup per note.
        seen_before = pl.Series([note_id in self._seen for note_id in ids], dtype=pl.Boolean)
        self._seen.update(ids.drop_nulls())
        invalid = pl.Series([row in batch.invalid_utf8 for row in range(batch.frame.height)], dtype=pl.Boolean)
        text = pl.col(text_column)
        frame = batch.frame.with_columns(ids).with_columns(
            pl.int_range(batch.first_row, batch.first_row + batch.frame.height, dtype=pl.Int64).alias(_ROW),
            pl.when(invalid)
            .then(pl.lit(QuarantineReason.INVALID_UTF8))
            .when(pl.col(NOTE_ID).is_null())
            .then(pl.lit(QuarantineReason.NULL_NOTE_ID))
            .when(pl.col(NOTE_ID) == "")
            .then(pl.lit(QuarantineReason.BLANK_NOTE_ID))
            .when(seen_before | ~pl.col(NOTE_ID).is_first_distinct())
            .then(pl.lit(QuarantineReason.DUPLICATE_NOTE_ID))
            .when(text.is_null())
            .then(pl.lit(QuarantineReason.NULL_TEXT))
            .when(text.str.strip_chars() == "")
            .then(pl.lit(QuarantineReason.EMPTY_TEXT))
            .otherwise(None)
            .alias(_REASON),
        )
        bad = frame.filter(pl.col(_REASON).is_not_null())
        good = frame.filter(pl.col(_REASON).is_null()).drop(_REASON)
        return good, _quarantine_frame(bad, file=batch.file)


def unprocessable(good: pl.DataFrame, note_ids: Collection[str], *, file: Path) -> pl.DataFrame:
    """Quarantine rows for the notes the model found no tokens in."""
    if not note_ids:
        return _NONE
    rows = good.filter(pl.col(NOTE_ID).is_in(list(note_ids))).with_columns(
        pl.lit(QuarantineReason.UNPROCESSABLE).alias(_REASON)
    )
    return _quarantine_frame(rows, file=file)
