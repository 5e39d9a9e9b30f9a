"""A reviewer's decisions (``DECISION_SCHEMA``): kept in memory, the whole file rewritten atomically and
durably after every change, so that a decision the page saw saved survives a crash or a power cut.

One row per (note, system, code) holds the latest decision on it; one row per note (system and code
null) says it was reviewed, or holds the comment of a note still open.
A file belongs to one reviewer: a second reviewer of the same sample writes a file of their own.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import polars as pl

from coder.errors import InputFileError, UsageError
from coder.io.atomic import write_parquet
from coder.io.read import read_table
from coder.schema import (CODE, COMMENT, DECIDED_AT, DECISION, DECISION_SCHEMA, GOLD_SCHEMA, NOTE_ID, RANK,
                          REVIEWER, SCORE, SYSTEM)

ACCEPTED, REJECTED, ADDED = "accepted", "rejected", "added"
CODE_DECISIONS = (ACCEPTED, REJECTED, ADDED)
ASSIGNED = (ACCEPTED, ADDED)
"""Decisions that give a note the code."""
COMMENTED, REVIEWED = "comment", "reviewed"
NOTE_DECISIONS = (COMMENTED, REVIEWED)
"""The note's own row: ``comment`` while the reviewer works on it (with a comment), ``reviewed`` once done."""

Key = tuple[str, str | None, str | None]
"""(note_id, system, code); system and code None for the note's comment."""


def read_decisions(path: Path) -> pl.DataFrame:
    """A decisions parquet written by `coder review`, checked: its columns and decision values."""
    frame = read_table(path, columns={NOTE_ID: "id", SYSTEM: "system", CODE: "code", DECISION: "decision",
                                      REVIEWER: "reviewer", COMMENT: "comment"},
                       typed={RANK: "integer", SCORE: "number"}, optional=[DECIDED_AT], what="decisions")
    odd = frame.filter(~pl.col(DECISION).is_in([*CODE_DECISIONS, *NOTE_DECISIONS]) | pl.col(DECISION).is_null())
    if odd.height:
        raise InputFileError(f"{path}: decision must be one of {', '.join((*CODE_DECISIONS, *NOTE_DECISIONS))}; "
                             f"{odd.height} row(s) are not, the first for note {odd.item(0, NOTE_ID)!r}")
    return frame


class DecisionStore:
    """The decisions of one reviewer in one file; safe to call from the server's threads."""

    def __init__(self, path: Path, *, reviewer: str) -> None:
        self.path, self.reviewer = path, reviewer
        self._lock = threading.Lock()
        self._rows: dict[Key, dict] = {}
        if path.exists():
            saved = read_decisions(path)
            others = sorted(set(saved.get_column(REVIEWER).drop_nulls().to_list()) - {reviewer})
            if others:
                raise UsageError(f"{path}: holds the decisions of {', '.join(others)}, not of {reviewer!r}; "
                                 "each reviewer writes a file of their own (--out), or give --reviewer as before")
            self._rows = {(row[NOTE_ID], row[SYSTEM], row[CODE]): row
                          for row in saved.select(DECISION_SCHEMA.names()).cast(dict(DECISION_SCHEMA)).iter_rows(named=True)}

    def decide(self, note_id: str, system: str, code: str, decision: str | None, *,
               rank: int | None = None, score: float | None = None) -> None:
        """Record ``decision`` on a code (None takes a decision back) and write the file."""
        if decision is not None and decision not in CODE_DECISIONS:
            raise UsageError(f"decision must be one of {', '.join(CODE_DECISIONS)}, got {decision!r}")
        self._change([((note_id, system, code), decision and self._row(note_id, system, code, decision, rank, score))])

    def comment(self, note_id: str, text: str) -> None:
        """Set the note's comment (blank removes it) and write the file."""
        with self._lock:
            done = self._rows.get((note_id, None, None), {}).get(DECISION) == REVIEWED
        text = text.strip()
        row = self._row(note_id, None, None, REVIEWED if done else COMMENTED, None, None, text or None)
        self._change([((note_id, None, None), row if text or done else None)])

    def complete(self, note_id: str, codes: Iterable[tuple[str, str, str, int | None, float | None]]) -> None:
        """Mark the note reviewed, recording (system, code, decision, rank, score) for each of ``codes`` not
        decided yet (what the page proposed), in one write."""
        with self._lock:
            note = self._rows.get((note_id, None, None), {})
            undecided = [code for code in codes if (note_id, code[0], code[1]) not in self._rows]
        self._change([((note_id, system, code), self._row(note_id, system, code, decision, rank, score))
                      for system, code, decision, rank, score in undecided]
                     + [((note_id, None, None), self._row(note_id, None, None, REVIEWED, None, None, note.get(COMMENT)))])

    def of_note(self, note_id: str) -> list[dict]:
        """The note's rows (its own row included), as dicts of ``DECISION_SCHEMA``'s columns."""
        with self._lock:
            return [row for key, row in self._rows.items() if key[0] == note_id]

    def reviewed(self) -> set[str]:
        """The notes marked reviewed."""
        with self._lock:
            return {key[0] for key, row in self._rows.items() if row[DECISION] == REVIEWED}

    def _row(self, note_id, system, code, decision, rank, score, comment=None) -> dict:
        now = datetime.datetime.now(datetime.UTC)
        return {NOTE_ID: note_id, SYSTEM: system, CODE: code, DECISION: decision, REVIEWER: self.reviewer,
                DECIDED_AT: now, RANK: rank, SCORE: score, COMMENT: comment}

    def _change(self, changes: Sequence[tuple[Key, dict | None]]) -> None:
        with self._lock:
            before = dict(self._rows)
            for key, row in changes:
                if row:
                    self._rows[key] = row
                else:
                    self._rows.pop(key, None)
            try:
                write_parquet(self.path, pl.DataFrame(list(self._rows.values()), schema=DECISION_SCHEMA))
            except BaseException:
                self._rows = before  # what the page is told is what the file holds
                raise


def gold_codes(paths: Sequence[Path]) -> tuple[pl.DataFrame, int]:
    """The codes reviewers accepted or added (``GOLD_SCHEMA``), for `coder train --codes`, and how many codes
    were left out because the reviewers disagreed on them: with several files a code is kept when every
    reviewer who judged it gave it to the note."""
    decided = pl.concat([read_decisions(path).filter(pl.col(DECISION).is_in(CODE_DECISIONS)) for path in paths])
    votes = decided.group_by(NOTE_ID, SYSTEM, CODE).agg(pl.col(DECISION).is_in(ASSIGNED).all().alias("kept"),
                                                        pl.col(DECISION).is_in(ASSIGNED).any().alias("given"))
    kept = votes.filter("kept").select(GOLD_SCHEMA.names()).sort(NOTE_ID, SYSTEM, CODE)
    return kept, votes.filter(pl.col("given") & ~pl.col("kept")).height
