"""The batches of a `coder predict` run and the one worker that codes them: it reads a pending batch,
screens it, codes its notes (``coder.pipeline.code_batch``) and writes its parts.

``coder.run`` plans the pending batches (``plan_batches``) and hands a ``BatchWorker`` to an engine
(``coder.engines``), which only maps it over them: in this process, in worker processes or on Ray
actors, each with its own model. The Python API codes its frames with the worker's own step
(``code_rows``). Nothing here knows which engine runs it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import polars as pl
import pyarrow as pa

from coder.io.parts import PartsFolder
from coder.io.read import (
    DEFAULT_MAX_NOTE_CHARS, InputPlan, NoteBatch, bound_notes, iter_batches, note_batch, open_planned, unreadable_after,
)
from coder.io.screen import RowScreen, note_ids, unprocessable
from coder.pipeline import CodedBatch, code_batch
from coder.schema import NOTE_ID, PREDICTION_SCHEMA

if TYPE_CHECKING:
    from coder.llm.vote import LLMStage
    from coder.assembly import Model

QUARANTINED = "quarantined."
"""Prefix of a batch's count of rows quarantined for one reason."""
OVER_MAX_NOTE_CHARS = "over_max_note_chars"
"""A batch's count of notes cut at ``max_note_chars``."""


@dataclass(frozen=True)
class BatchOutput:
    """What a batch of input rows became: predictions, quarantined rows, and its counts."""

    predictions: pl.DataFrame
    quarantine: pl.DataFrame
    counts: dict[str, Any]


def code_rows(model: Model, batch: NoteBatch, *, screen: RowScreen, top_k: int, threshold_only: bool,
              max_note_chars: int = DEFAULT_MAX_NOTE_CHARS, llm: LLMStage | None = None) -> BatchOutput:
    """Screen ``batch`` (rows it cannot code go to quarantine with a reason), cut notes longer than
    ``max_note_chars`` (``coder.io.read.bound_notes``) and code the rest."""
    good, bad = screen.split(batch, text_column=model.scorer.text_column)
    good, long = bound_notes(good, columns=model.text_columns, max_chars=max_note_chars)
    coded = CodedBatch(predictions=PREDICTION_SCHEMA.to_frame())  # a batch whose rows were all quarantined
    if not good.is_empty():
        coded = code_batch(model, good.drop("row"), top_k=top_k, threshold_only=threshold_only, llm=llm)
    if coded.unprocessable:
        bad = pl.concat([bad, unprocessable(good, coded.unprocessable, file=batch.file)])
    notes = good.height - len(coded.unprocessable)
    counts = {
        "input_rows": batch.frame.height,
        "notes_coded": notes,
        "notes_without_codes": notes - coded.predictions.get_column(NOTE_ID).n_unique(),
        "codes_written": coded.predictions.height,
        "truncated": len({*coded.truncated, *long}),
        OVER_MAX_NOTE_CHARS: len(long),
        **coded.counts,
        **{f"{QUARANTINED}{reason}": n for reason, n in Counter(bad.get_column("reason")).items()},
    }
    return BatchOutput(coded.predictions, bad, counts)


@dataclass(frozen=True)
class PendingBatch:
    """One batch still to code: where its rows are, and which of its ids earlier batches hold."""

    index: int
    file: Path
    """Absolute: workers do not share the driver's working directory."""
    first_row: int
    rows: int
    seen: tuple[str, ...]

    def to_item(self) -> dict[str, Any]:
        """A row of plain columns for Ray Data; the ids travel as JSON, so an empty list keeps its type."""
        return {**asdict(self), "file": str(self.file), "seen": json.dumps(self.seen)}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> PendingBatch:
        return cls(**{**item, "file": Path(item["file"]), "seen": tuple(json.loads(item["seen"]))})


def plan_batches(plan: InputPlan, *, batch_size: int, done: Mapping[int, Any]) -> tuple[int, list[PendingBatch]]:
    """First pass, over the id column only: (batches in the run, the batches not in ``done``).

    It reads with the local reader (``coder.io.read.iter_batches``), so the batches are the same in
    every engine, and records for each batch the ids met in earlier batches: the worker that screens
    one batch then applies the run-wide duplicate rule (the first occurrence in input order is coded)
    on its own, with the ids as the screen compares them (``coder.io.screen.note_ids``: trimmed; one
    that is not valid UTF-8 reads as null).
    """
    met: set[str] = set()
    pending: list[PendingBatch] = []
    batches = 0
    for batch in iter_batches(replace(plan, columns={}), batch_size=batch_size):
        batches += 1
        ids = set(note_ids(batch.frame).drop_nulls())
        if batch.index not in done:
            pending.append(PendingBatch(index=batch.index, file=batch.file, first_row=batch.first_row,
                                        rows=batch.frame.height, seen=tuple(sorted(ids & met))))
        met |= ids
    return batches, pending


def read_batch(plan: InputPlan, pending: PendingBatch) -> NoteBatch:
    """The batch's rows as the local reader gives them (``coder.io.read.note_batch``), from the file as it was
    planned (``coder.io.read.open_planned``); only the row groups that hold them are read."""
    parquet = open_planned(plan.file(pending.file))
    metadata = parquet.metadata
    starts = list(accumulate((metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)), initial=0))
    end = pending.first_row + pending.rows
    groups = [g for g in range(metadata.num_row_groups) if starts[g] < end and starts[g + 1] > pending.first_row]
    try:
        table = parquet.read_row_groups(groups, columns=list(plan.renames))
    except (pa.ArrowException, OSError) as error:
        raise unreadable_after(pending.file, pending.first_row, error) from None
    offset = pending.first_row - starts[groups[0]] if groups else 0
    return note_batch(table.slice(offset, pending.rows), plan=plan, index=pending.index, file=pending.file,
                      first_row=pending.first_row)


@dataclass(frozen=True)
class BatchResult:
    """What the worker reports of a batch it coded and wrote."""

    index: int
    counts: Mapping[str, Any]
    """``BatchOutput.counts``: input rows, notes coded, quarantined rows by reason, seconds per stage."""
    ran_on: str
    """The execution provider and the ONNX precision it was coded on (``PartsFolder.write_batch``'s ``ran_on``)."""


@dataclass(frozen=True)
class BatchWorker:
    """What every engine maps over a run's pending batches, with the model it holds: read a batch
    (``read_batch``), screen and code it (``code_rows``), write its parts. Frozen and made of plain
    values, so it travels to worker processes and Ray actors."""

    plan: InputPlan
    parts: PartsFolder
    batch_size: int
    top_k: int
    threshold_only: bool
    max_note_chars: int

    def __call__(self, model: Model, pending: PendingBatch, *, rows: NoteBatch | None = None,
                 llm: LLMStage | None = None) -> BatchResult:
        """Code and write ``pending``; ``rows``: its rows when the engine read them already (``stream``)."""
        batch = read_batch(self.plan, pending) if rows is None else rows
        output = code_rows(model, batch, screen=RowScreen(seen=pending.seen), top_k=self.top_k,
                           threshold_only=self.threshold_only, max_note_chars=self.max_note_chars, llm=llm)
        ran_on = f"{model.execution_provider} {model.precision}"
        self.parts.write_batch(pending.index, predictions=output.predictions, quarantine=output.quarantine,
                               counts=output.counts, ran_on=ran_on)
        return BatchResult(index=pending.index, counts=output.counts, ran_on=ran_on)

    def stream(self, pending: Sequence[PendingBatch]) -> Iterator[tuple[PendingBatch, NoteBatch]]:
        """The pending batches with their rows, in input order, read in one pass over the files: a file's row
        groups are read once, however the batches fall on them (``read_batch`` reads whole row groups)."""
        waiting = {batch.index: batch for batch in pending}
        if not waiting:
            return
        for batch in iter_batches(self.plan, batch_size=self.batch_size):
            if batch.index in waiting:
                yield waiting.pop(batch.index), batch
                if not waiting:
                    return


class Engine(Protocol):
    """Maps ``worker`` over ``pending`` (each batch once, on a model the engine holds), handing each
    result to ``record`` as its batch finishes; returns the manifest's ``engine`` section: which engine
    coded the batches, and how."""

    def __call__(self, worker: BatchWorker, pending: Sequence[PendingBatch], *,
                 record: Callable[[BatchResult], None]) -> dict[str, Any]: ...
