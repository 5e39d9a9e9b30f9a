"""One review: the queue of notes, what the page shows of a note, and the reviewer's decisions on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from coder.errors import UsageError
from coder.review.decisions import ACCEPTED, ADDED, REJECTED, REVIEWED, DecisionStore
from coder.review.notes import NotePredictions, NoteTexts, review_queue
from coder.review.search import CodeSearch
from coder.schema import (ABOVE_THRESHOLD, CODE, COMMENT, DECISION, DESCRIPTION, EVIDENCE, EVIDENCE_IN, RANK, SCORE,
                          SOURCE, SYSTEM, TEXT)
from coder.validate import AssignableCodes


@dataclass(frozen=True)
class Review:
    """The notes and predictions (read a note at a time), the queue, the decisions file and the code search."""

    notes: NoteTexts
    predictions: NotePredictions
    queue: tuple[str, ...]
    store: DecisionStore
    search: CodeSearch
    top: int

    @classmethod
    def open(cls, predictions: Path, *, notes: Path, out: Path, reviewer: str, gate: AssignableCodes,
             sample: int | None = None, seed: int = 0, gold: Path | None = None, top: int = 8) -> Review:
        texts, predicted = NoteTexts.open(notes), NotePredictions.open(predictions)
        queue = review_queue(texts, predicted, sample=sample, seed=seed, gold=gold)
        if not queue:
            raise UsageError(f"no note to review: none of the notes predicted in {predictions} is in {notes}"
                             + (f" and in {gold}" if gold else ""))
        return cls(notes=texts, predictions=predicted, queue=queue, store=DecisionStore(out, reviewer=reviewer),
                   search=CodeSearch.build(gate), top=top)

    def progress(self) -> dict[str, Any]:
        """The queue's length, the notes reviewed and the first position not reviewed (where to resume)."""
        done = self.store.reviewed()
        first = next((position for position, note in enumerate(self.queue) if note not in done), len(self.queue) - 1)
        return {"total": len(self.queue), "reviewed": sum(note in done for note in self.queue), "resume": first,
                "reviewer": self.store.reviewer}

    def note(self, position: int) -> dict[str, Any]:
        """What the page shows of the queue's ``position``-th note: each text column cut into segments with the
        suggested codes whose evidence covers them, the suggested codes (evidence as a column and offsets when
        they fit its text) with their decisions, the added codes and the comment."""
        note_id = self._note_id(position)
        texts = self.notes.texts(note_id)
        decided = {(row[SYSTEM], row[CODE]): row for row in self.store.of_note(note_id)}
        codes = [{**{key: row.get(key) for key in (SYSTEM, CODE, DESCRIPTION, SCORE, RANK, ABOVE_THRESHOLD, SOURCE)},
                  "evidence": _evidence(row, texts), DECISION: decided.pop((row[SYSTEM], row[CODE]), {}).get(DECISION)}
                 for row in self._suggested(note_id).iter_rows(named=True)]
        own = decided.pop((None, None), {})
        added = [{SYSTEM: system, CODE: code, DESCRIPTION: self.search.gate.ontology.lookup(code, system).description}
                 for (system, code), row in decided.items() if row[DECISION] == ADDED]
        columns = {column: _segments(text or "", [(i, code["evidence"]) for i, code in enumerate(codes)
                                                   if code["evidence"] and code["evidence"]["column"] == column])
                   for column, text in texts.items()}
        return {"position": position, "note_id": note_id, "columns": columns, "codes": codes, "added": added,
                "comment": own.get(COMMENT) or "", "reviewed": own.get(DECISION) == REVIEWED, **self.progress()}

    def decide(self, position: int, *, system: str, code: str, decision: str | None) -> None:
        """Accept or reject a suggested code, add an assignable one (accept it, if it is suggested), or take a
        decision back (None)."""
        note_id = self._note_id(position)
        if decision == ADDED:
            info = self.search.gate.ontology.lookup(code, system)
            if info.canonical is None or not self.search.gate(info.canonical, system):
                raise UsageError(f"{code!r} is not an assignable {system} code; pick one the search offers")
            code = info.canonical
        suggested = self._suggested(note_id).filter(pl.col(SYSTEM) == system, pl.col(CODE) == code)
        if decision == ADDED and suggested.is_empty():
            self.store.decide(note_id, system, code, ADDED)
            return
        decision = ACCEPTED if decision == ADDED else decision
        if decision is not None and suggested.is_empty():
            raise UsageError(f"{system} {code!r} is not among the codes suggested for note {position + 1} of the queue")
        rank, score = (suggested.item(0, RANK), suggested.item(0, SCORE)) if suggested.height else (None, None)
        self.store.decide(note_id, system, code, decision, rank=rank, score=score)

    def comment(self, position: int, text: str) -> None:
        self.store.comment(self._note_id(position), text)

    def complete(self, position: int) -> None:
        """Mark the note reviewed; the codes left undecided get what the page proposed: accepted when above
        their threshold, rejected otherwise."""
        note_id = self._note_id(position)
        proposed = [(row[SYSTEM], row[CODE], ACCEPTED if row[ABOVE_THRESHOLD] else REJECTED, row[RANK], row[SCORE])
                    for row in self._suggested(note_id).iter_rows(named=True)]
        self.store.complete(note_id, proposed)

    def _note_id(self, position: int) -> str:
        if not 0 <= position < len(self.queue):
            raise IndexError(position)
        return self.queue[position]

    def _suggested(self, note_id: str) -> pl.DataFrame:
        return self.predictions.codes(note_id, top=self.top)


def _evidence(row: dict[str, Any], texts: dict[str, str | None]) -> dict[str, Any] | None:
    """The evidence's column and offsets when they lie within that column's text, else None."""
    start, end, column = row.get(EVIDENCE[1]), row.get(EVIDENCE[2]), row.get(EVIDENCE_IN) or TEXT
    text = texts.get(column)
    if start is None or end is None or text is None or not 0 <= start < end <= len(text):
        return None
    return {"column": column, "start": start, "end": end}


def _segments(text: str, spans: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """``text`` cut at every evidence boundary: [{text, codes: indices of the codes whose span covers it}]."""
    cuts = sorted({0, len(text), *(at for _, span in spans for at in (span["start"], span["end"]))})
    return [{"text": text[start:end], "codes": [i for i, span in spans if span["start"] <= start and end <= span["end"]]}
            for start, end in zip(cuts, cuts[1:])]
