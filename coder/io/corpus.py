"""Labelled corpora: notes, gold codes and (optionally) coders' evidence spans, read with clear errors.

Code rows (gold codes, evidence spans, and the predictions an audit reads) are all-or-nothing: a
null note id, system or code, or a system not spelled as in ``coder.schema.SYSTEMS``, stops the
command with the file, the column and the rows (``check_codes``).

``coder train``, the stacking and export checks and ``coder audit`` read their inputs here, with
the same file/column errors as ``coder predict`` (``coder.io.read.read_table``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa

from coder.errors import InputFileError
from coder.io.read import read_table
from coder.schema import (CODE, EVIDENCE_FILE_OFFSETS, EVIDENCE_FILE_TEXT, EVIDENCE_IN, GOLD_SCHEMA, NOTE_ID, SPAN_OFFSETS,
                          SPAN_SCHEMA, SPAN_TEXT, SYSTEM, SYSTEMS, TEXT_ES)

logger = logging.getLogger(__name__)


def read_notes(path: Path, *, text_columns: Sequence[str], optional: Sequence[str] = ()) -> pl.DataFrame:
    """note_id and ``text_columns`` (plus the ``optional`` columns the file has) of a notes file;
    rows with a null id, blank primary text or a repeated id are dropped and counted in a warning."""
    names = pl.read_parquet_schema(path).keys() if path.is_file() else ()
    wanted = {NOTE_ID: "id", **dict.fromkeys(text_columns, "text"), **{c: "text" for c in optional if c in names}}
    frame = read_table(path, columns=wanted, what="notes")
    primary = pl.col(text_columns[0])
    kept = frame.filter(pl.col(NOTE_ID).is_not_null() & (primary.str.strip_chars().str.len_chars() > 0))
    kept = kept.unique(NOTE_ID, keep="first", maintain_order=True)
    if kept.height < frame.height:
        logger.warning("%s: %d of %d rows not used (null id, blank text or repeated id)", path, frame.height - kept.height, frame.height)
    return kept


def check_codes(frame: pl.DataFrame, path: Path) -> pl.DataFrame:
    """``frame`` (rows of ``path`` with note_id, system and code) if every row has all three and a
    system of ``coder.schema.SYSTEMS``; else InputFileError naming the file, the column and the rows.
    Such rows are refused, not dropped: training would learn without them and an audit would score
    them 0 (``CM`` or ``pcs`` matches no gold system) without a word."""
    for column in (NOTE_ID, SYSTEM, CODE):
        rows = frame.get_column(column).is_null().arg_true()
        if rows.len():
            first = ", ".join(map(str, rows.head(5))) + (", ..." if rows.len() > 5 else "")
            raise InputFileError(f"{path}: column {column!r} is null in {rows.len()} of {frame.height} rows "
                                 f"(0-based: {first}); every row needs a {column}")
    unknown = frame.filter(~pl.col(SYSTEM).is_in(SYSTEMS)).group_by(SYSTEM).len().sort(SYSTEM)
    if unknown.height:
        found = ", ".join(f"{value!r} ({count} row{'s' * (count > 1)})" for value, count in unknown.iter_rows())
        raise InputFileError(f"{path}: column {SYSTEM!r} has unknown values {found}; expected "
                             f"{' or '.join(map(repr, SYSTEMS))}, spelled exactly so")
    return frame


def read_codes(path: Path, *, table: pa.Table | None = None) -> pl.DataFrame:
    """Gold codes (GOLD_SCHEMA), checked by ``check_codes``: ``coder train`` and ``coder audit`` read them here
    (``table``: rows already in memory, named ``path``; see ``read_table``)."""
    frame = read_table(path, columns={NOTE_ID: "id", CODE: "code", SYSTEM: "system"}, what="codes", table=table)
    return check_codes(frame, path).select(GOLD_SCHEMA.names())


def read_evidence(path: Path) -> pl.DataFrame:
    """Coders' evidence spans of a CodiEsp-X-shaped file, checked by ``check_codes``, as SPAN_SCHEMA
    (the file's evidence_es / offsets_es renamed to the language-neutral span columns)."""
    columns = {NOTE_ID: "id", SYSTEM: "system", CODE: "code", EVIDENCE_FILE_TEXT: "evidence", EVIDENCE_FILE_OFFSETS: "offsets"}
    spans = check_codes(read_table(path, columns=columns, what="evidence"), path)
    return spans.rename({EVIDENCE_FILE_TEXT: SPAN_TEXT, EVIDENCE_FILE_OFFSETS: SPAN_OFFSETS})


@dataclass(frozen=True)
class Corpus:
    """Labelled notes: notes (note_id, text columns), gold codes, evidence spans (SPAN_SCHEMA, may be empty).

    Each evidence row says in ``evidence_column`` which text column its offsets point into (rows
    without it point into ``text_es``, as CodiEsp-X's do); projection adds spans into another."""

    notes: pl.DataFrame
    codes: pl.DataFrame
    evidence: pl.DataFrame

    def __post_init__(self) -> None:
        if EVIDENCE_IN not in self.evidence.columns:
            object.__setattr__(self, "evidence", self.evidence.with_columns(pl.lit(TEXT_ES, dtype=pl.String).alias(EVIDENCE_IN)))

    @classmethod
    def read(cls, notes: Path, codes: Path, evidence: Path | None = None, *, text_columns: Sequence[str],
             optional: Sequence[str] = (), evidence_column: str = TEXT_ES) -> Corpus:
        """Read the three files (the spans' offsets point into ``evidence_column``); gold codes and
        spans of notes that are not in ``notes`` are dropped."""
        frame = read_notes(notes, text_columns=text_columns, optional=optional)
        spans = read_evidence(evidence) if evidence is not None else pl.DataFrame(schema=SPAN_SCHEMA)
        spans = spans.with_columns(pl.lit(evidence_column, dtype=pl.String).alias(EVIDENCE_IN))
        return cls(frame, read_codes(codes), spans).subset(frame[NOTE_ID])

    def spans(self, column: str) -> pl.DataFrame:
        """The evidence spans whose offsets point into ``column`` (SPAN_SCHEMA)."""
        return self.evidence.filter(pl.col(EVIDENCE_IN) == column).select(SPAN_SCHEMA.names())

    def with_spans(self, spans: pl.DataFrame, *, column: str) -> Corpus:
        """This corpus with ``spans`` (SPAN_SCHEMA, offsets into ``column``) added to its evidence."""
        added = spans.select(SPAN_SCHEMA.names()).with_columns(pl.lit(column, dtype=pl.String).alias(EVIDENCE_IN))
        return Corpus(self.notes, self.codes, pl.concat([self.evidence, added]))

    def subset(self, note_ids: pl.Series) -> Corpus:
        def keep(frame: pl.DataFrame) -> pl.DataFrame:
            return frame.filter(pl.col(NOTE_ID).is_in(note_ids.implode()))

        return Corpus(keep(self.notes), keep(self.codes), keep(self.evidence))

    def plus(self, other: Corpus) -> Corpus:
        """This corpus and ``other`` (notes of other ids, with the same text columns) in one."""
        return Corpus(pl.concat([self.notes, other.notes.select(self.notes.columns)]), pl.concat([self.codes, other.codes]),
                      pl.concat([self.evidence, other.evidence.select(self.evidence.columns)]))

    def text_only(self, column: str) -> Corpus:
        """The same corpus with only ``column`` as note text (degraded dumps)."""
        return Corpus(self.notes.select(NOTE_ID, column), self.codes, self.evidence)
