"""Notes and predictions read one note at a time, so that a dump of any size opens at once.

Opening reads the ``note_id`` columns alone and indexes each note's row positions; a note's page
then reads its rows only (``read_table(rows=...)``). Predictions written by `coder predict` keep a
note's rows together; a file sorted otherwise still works, reading the rows between a note's first
and last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from coder.auditing.review import sample_notes
from coder.errors import InputFileError
from coder.io.corpus import read_codes
from coder.io.read import read_table
from coder.schema import (ABOVE_THRESHOLD, CODE, DESCRIPTION, EVIDENCE, EVIDENCE_IN, NOTE_ID, RANK, SCORE, SOURCE,
                          SYSTEM, TEXT, TEXT_ES)

log = logging.getLogger(__name__)

TEXT_COLUMNS = (TEXT, TEXT_ES)
"""The notes' columns the page shows, those the evidence offsets point into."""
_PREDICTION_COLUMNS = {NOTE_ID: "id", SYSTEM: "system", CODE: "code"}
_PREDICTION_TYPED = {RANK: "integer", SCORE: "number", ABOVE_THRESHOLD: "boolean"}


def _row_ranges(path: Path, *, what: str, columns: dict[str, str], typed: dict[str, str] | None = None) -> dict[str, tuple[int, int]]:
    """note_id -> (first row, rows up to its last) of a parquet file, from its id column alone (the others checked)."""
    read_table(path, columns=columns, typed=typed, what=what, rows=(0, 0))
    ids = read_table(path, columns={NOTE_ID: "id"}, what=what).with_row_index("row")
    ranges = ids.group_by(NOTE_ID, maintain_order=True).agg(pl.col("row").min().alias("first"), pl.col("row").max().alias("last"))
    return {note: (first, last - first + 1) for note, first, last in ranges.iter_rows() if note is not None}


@dataclass(frozen=True)
class NoteTexts:
    """The notes file: each note's texts on demand."""

    path: Path
    rows: dict[str, tuple[int, int]]
    columns: tuple[str, ...]
    """The text columns it has, of ``TEXT_COLUMNS``."""

    @classmethod
    def open(cls, path: Path) -> NoteTexts:
        columns = tuple(read_table(path, columns={NOTE_ID: "id"}, optional=TEXT_COLUMNS, what="notes", rows=(0, 0)).columns[1:])
        if not columns:
            raise InputFileError(f"{path}: the notes have neither a {TEXT!r} nor a {TEXT_ES!r} column; the page shows these")
        return cls(path=path, rows=_row_ranges(path, what="notes", columns={NOTE_ID: "id", **dict.fromkeys(columns, "text")}),
                   columns=columns)

    def texts(self, note_id: str) -> dict[str, str | None]:
        """The note's text columns (its first row when the id repeats)."""
        first, _ = self.rows[note_id]
        row = read_table(self.path, columns={NOTE_ID: "id", **dict.fromkeys(self.columns, "text")}, what="notes",
                         rows=(first, 1))
        return {column: row.item(0, column) for column in self.columns}


@dataclass(frozen=True)
class NotePredictions:
    """The predictions file: each note's codes on demand."""

    path: Path
    rows: dict[str, tuple[int, int]]

    @classmethod
    def open(cls, path: Path) -> NotePredictions:
        return cls(path=path, rows=_row_ranges(path, what="predictions", columns=_PREDICTION_COLUMNS, typed=_PREDICTION_TYPED))

    def codes(self, note_id: str, *, top: int) -> pl.DataFrame:
        """The note's ``top`` codes per system, best first, with the columns the file has."""
        found = read_table(self.path, columns=_PREDICTION_COLUMNS, typed=_PREDICTION_TYPED, what="predictions",
                           optional=[DESCRIPTION, SOURCE, *EVIDENCE, EVIDENCE_IN], rows=self.rows[note_id])
        return found.filter(pl.col(NOTE_ID) == note_id, pl.col(RANK) <= top).sort(SYSTEM, RANK)


def review_queue(notes: NoteTexts, predictions: NotePredictions, *, sample: int | None, seed: int,
                 gold: Path | None) -> tuple[str, ...]:
    """The notes to review, in order: the predicted notes that the notes file has, or a seeded ``sample`` of
    them (``coder.auditing.review.sample_notes``, as `coder audit --sample` draws); with ``gold`` only its notes."""
    predicted = [note for note in predictions.rows if note in notes.rows]
    if missing := len(predictions.rows) - len(predicted):
        log.warning("%d predicted note(s) are not in %s and are left out of the queue", missing, notes.path)
    audited = read_codes(gold) if gold is not None else None
    return sample_notes(pl.Series(NOTE_ID, predicted, dtype=pl.String), n=sample, seed=seed, gold=audited)
