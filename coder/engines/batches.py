"""Batches coded away from the driver, by the engines that run workers (``coder.engines.ray``,
``coder.engines.processes``): the plan of the pending batches, each batch's rows, and the worker
that loads the model once and then reads, screens, codes and writes whole batches.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from coder.errors import CoderError, InputFileError, WorkerError
from coder.io.parts import PartsFolder
from coder.io.progress import Progress
from coder.io.read import InputPlan, NoteBatch, iter_batches, note_batch, open_planned
from coder.io.screen import RowScreen, note_ids
from coder.run import EngineReport, PredictOptions, code_and_write, stage_seconds

if TYPE_CHECKING:
    from coder.model.load import Model


@dataclass(frozen=True)
class PendingBatch:
    """One batch still to score: where its rows are, and which of its ids earlier batches hold."""

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

    It reads with the local engine's reader, so the batches are the local engine's, and records
    for each batch the ids met in earlier batches: a worker that screens one batch then applies
    the run-wide duplicate rule (the first occurrence in input order is coded) on its own, with the
    ids as the screen compares them (``coder.io.screen.note_ids``: trimmed; one that is not valid
    UTF-8 reads as null).
    """
    met: set[str] = set()
    pending: list[PendingBatch] = []
    batches = 0
    for batch in iter_batches(replace(plan, columns={}), batch_size=batch_size):
        batches += 1
        ids = set(note_ids(batch.frame).drop_nulls())
        if batch.index not in done:
            pending.append(
                PendingBatch(
                    index=batch.index,
                    file=batch.file,
                    first_row=batch.first_row,
                    rows=batch.frame.height,
                    seen=tuple(sorted(ids & met)),
                )
            )
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
        raise InputFileError(f"{pending.file}: unreadable at row {pending.first_row} ({type(error).__name__}); "
                             "is the file truncated?") from None
    offset = pending.first_row - starts[groups[0]] if groups else 0
    return note_batch(table.slice(offset, pending.rows), plan=plan, index=pending.index, file=pending.file,
                      first_row=pending.first_row)


RESULT_SCHEMA = pa.schema(
    {"index": pa.int64(), "counts": pa.string(), "execution_provider": pa.string(), "precision": pa.string(),
     "error": pa.string(), "exit_code": pa.int64()}
)


class BatchCoder:
    """A worker (a Ray actor, or a process of ``coder.engines.processes``): loads the model once,
    then reads, screens, codes and writes whole batches.

    A CoderError comes back as a result row, not raised: across Ray or a process pool it would keep
    neither its class nor its exit code. ``where`` names the worker in its message.
    """

    def __init__(self, *, load: Callable[[], Model], plan: InputPlan, parts: PartsFolder, options: PredictOptions,
                 where: str = "worker") -> None:
        self._plan = plan
        self._parts = parts
        self._options = options
        self._where = where
        self._model: Model | None = None
        self._load_error: CoderError | None = None
        try:
            self._model = load()
        except CoderError as error:
            self._load_error = error

    def __call__(self, items: pa.Table) -> pa.Table:
        """Ray Data's call: rows of ``PendingBatch.to_item()`` -> one row per batch in ``RESULT_SCHEMA``."""
        return pa.Table.from_pylist([self.code(PendingBatch.from_item(item)) for item in items.to_pylist()],
                                    schema=RESULT_SCHEMA)

    def code(self, pending: PendingBatch) -> dict[str, Any]:
        """Code and write one batch; its result row (``RESULT_SCHEMA``)."""
        try:
            if self._load_error is not None:
                raise self._load_error
            model = self._model
            batch = read_batch(self._plan, pending)
            counts = code_and_write(model, batch, screen=RowScreen(seen=pending.seen), parts=self._parts, options=self._options)
        except CoderError as error:
            return {"index": pending.index, "error": f"{type(error).__name__} on a {self._where}: {error}",
                    "exit_code": error.exit_code}
        return {"index": batch.index, "counts": json.dumps(counts), "execution_provider": model.execution_provider,
                "precision": model.precision}


@dataclass
class Tally:
    """What the driver keeps of the workers' result rows, in the order they finish."""

    done: dict[int, dict[str, Any]]
    """The run's finished batches (``coder.run.Engine``'s ``done``), added to."""
    rows: Mapping[int, int]
    """Input rows per pending batch."""
    progress: Progress
    seconds: Counter = field(default_factory=Counter)
    providers: set[str] = field(default_factory=set)
    precisions: set[str] = field(default_factory=set)

    @classmethod
    def start(cls, plan: InputPlan, *, batch_size: int, done: dict[int, dict[str, Any]],
              progress: Progress) -> tuple[int, list[PendingBatch], Tally]:
        """The run's batch count, its pending batches (``plan_batches``), and their tally; the rows of
        the batches already done count as progress."""
        batches, pending = plan_batches(plan, batch_size=batch_size, done=done)
        tally = cls(done=done, rows={p.index: p.rows for p in pending}, progress=progress)
        progress.update(plan.total_rows - sum(tally.rows.values()))
        return batches, pending, tally

    def add(self, row: Mapping[str, Any]) -> None:
        """Record a batch's result row; a worker's CoderError ends the run with its message and exit code."""
        if row.get("error"):
            raise WorkerError(row["error"], exit_code=row["exit_code"])
        self.done[row["index"]] = json.loads(row["counts"])
        self.seconds.update(stage_seconds(self.done[row["index"]]))
        self.providers.add(row["execution_provider"])
        self.precisions.add(row["precision"])
        self.progress.update(self.rows[row["index"]])

    def report(self, *, batches: int, model: Model, engine: Mapping[str, Any]) -> EngineReport:
        """The engine's ``EngineReport``: what the workers ran on (the driver's model where none ran)."""
        return EngineReport(batches=batches, fresh_rows=sum(self.rows.values()), stage_seconds=dict(self.seconds),
                            execution_provider=",".join(sorted(self.providers)) or model.execution_provider,
                            precision=",".join(sorted(self.precisions)) or model.precision, engine=engine)


def load_worker_model(model: Path, *, device: str, precision: str, codes_file: Path | None) -> Model:
    """What each worker loads: the model with the code list the driver resolved."""
    from coder.model.load import load_model

    return load_model(model, device=device, precision=precision, codes_file=codes_file)


def worker_load(model: Path | None, *, device: str, precision: str,
                codes_file: Path | None) -> tuple[Path, Path | None, Callable[[], Model]]:
    """(model folder, code list, what each worker calls to load the model): the paths absolute, as
    workers do not share the driver's working directory, the model the default one when not given."""
    from coder.model.folder import default_model_path

    model_path = (model or default_model_path()).resolve()
    codes = codes_file.resolve() if codes_file else None
    return model_path, codes, functools.partial(load_worker_model, model_path, device=device, precision=precision,
                                                codes_file=codes)
