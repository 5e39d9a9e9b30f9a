"""The Ray engine of ``coder predict``: the local engine's batches, scored by a pool of Ray actors.

The driver plans the run exactly as the local engine does (``coder.run.run_batches``: same
files, same batches, same part names, same fingerprint) and reads only the id column first, to
settle the duplicate-id rule for the whole run. Each actor loads the model once, then for every
batch it is given reads that batch's rows, screens them, scores them and writes the batch's parts.
The driver then combines the parts and writes the quarantine and the manifest like a local run.
The Ray dataset is the list of pending batches, not ``ray.data.read_parquet`` blocks: those carry
no row numbers within a file and do not fall on the local engine's batch boundaries, which the
quarantine's ``row`` column, the duplicate rule and resuming by batch all need.

A batch is the unit of work, of retry and of resume: an actor that dies is restarted and its batch
retried, and the retry rewrites the same part files, so no note is lost or written twice.
Workers on other machines need the input files, the model folder and the output's folder at the
same paths (a shared filesystem).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from itertools import accumulate
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from coder.errors import CoderError, MissingDependencyError, UsageError, WorkerError
from coder.io.parts import PartsFolder
from coder.io.progress import Progress
from coder.io.read import InputPlan, NoteBatch, iter_batches, note_batch
from coder.io.screen import RowScreen, note_ids
from coder.llm.vote import LLMStage
from coder.predict import predict_notes
from coder.run import PredictOptions, RunSummary, Scored, code_and_write, stage_seconds

if TYPE_CHECKING:
    from coder.model.load import Model

log = logging.getLogger(__name__)

RAY_REQUIREMENT = "'ray[data]==2.60.0'"
"""The pip requirement of the ``ray`` extra, quoted for the shell."""


def import_ray() -> ModuleType:
    """``ray`` with Ray Data, or MissingDependencyError with the pip line."""
    try:
        import ray
        import ray.data  # noqa: F401  (the engine runs on Ray Data)
    except ImportError:
        raise MissingDependencyError(RAY_REQUIREMENT, "--engine ray") from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where the actors run and what each one holds."""

    address: str | None = None
    """Cluster to join (``auto``, ``HOST:6379`` or ``ray://HOST:10001``); None: ``$RAY_ADDRESS``, else a local Ray."""
    actors: int | None = None
    """Most model actors at once (None: as many as the cluster's GPUs, or CPUs, allow)."""
    cpus_per_actor: float = 1.0
    """CPUs reserved by each actor."""
    gpus_per_actor: float | None = None
    """GPUs reserved by each actor (None: 1 when the cluster has GPUs, else 0 and the actors run on CPU)."""
    max_restarts: int = 3
    """Restarts of an actor that died, and retries of the batch it held, before the run fails."""

    def __post_init__(self) -> None:
        if (
            (self.actors is not None and self.actors < 1)
            or self.cpus_per_actor <= 0
            or (self.gpus_per_actor or 0) < 0
            or self.max_restarts < 0
        ):
            raise UsageError(
                f"Ray options out of range: actors {self.actors} (at least 1), cpus_per_actor {self.cpus_per_actor} "
                f"(above 0), gpus_per_actor {self.gpus_per_actor} (0 or more), max_restarts {self.max_restarts} (0 or more)"
            )


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
    """The batch's rows as the local reader gives them (``coder.io.read.note_batch``); only the row groups
    that hold them are read."""
    parquet = pq.ParquetFile(pending.file)
    metadata = parquet.metadata
    starts = list(accumulate((metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)), initial=0))
    end = pending.first_row + pending.rows
    groups = [g for g in range(metadata.num_row_groups) if starts[g] < end and starts[g + 1] > pending.first_row]
    table = parquet.read_row_groups(groups, columns=list(plan.renames))
    offset = pending.first_row - starts[groups[0]] if groups else 0
    return note_batch(table.slice(offset, pending.rows), plan=plan, index=pending.index, file=pending.file,
                      first_row=pending.first_row)


_RESULT_SCHEMA = pa.schema(
    {"index": pa.int64(), "counts": pa.string(), "execution_provider": pa.string(), "precision": pa.string(),
     "error": pa.string(), "exit_code": pa.int64()}
)


class BatchCoder:
    """A Ray actor: loads the model once, then reads, screens, codes and writes whole batches.

    A CoderError comes back as a result row, not raised: Ray would wrap it in an error that
    keeps neither its class nor its exit code.
    """

    def __init__(self, *, load: Callable[[], Model], plan: InputPlan, parts: PartsFolder, options: PredictOptions) -> None:
        self._plan = plan
        self._parts = parts
        self._options = options
        self._model: Model | None = None
        self._load_error: CoderError | None = None
        try:
            self._model = load()
        except CoderError as error:
            self._load_error = error

    def __call__(self, items: pa.Table) -> pa.Table:
        """Rows of ``PendingBatch.to_item()`` -> one row per batch in ``_RESULT_SCHEMA``."""
        rows = []
        for item in items.to_pylist():
            pending = PendingBatch.from_item(item)
            try:
                rows.append(self._code(pending))
            except CoderError as error:
                message = f"{type(error).__name__} on a Ray worker: {error}"
                rows.append({"index": pending.index, "error": message, "exit_code": error.exit_code})
        return pa.Table.from_pylist(rows, schema=_RESULT_SCHEMA)

    def _code(self, pending: PendingBatch) -> dict[str, Any]:
        if self._load_error is not None:
            raise self._load_error
        model = self._model
        batch = read_batch(self._plan, pending)
        counts = code_and_write(model, batch, screen=RowScreen(seen=pending.seen), parts=self._parts, options=self._options)
        return {"index": batch.index, "counts": json.dumps(counts), "execution_provider": model.execution_provider,
                "precision": model.precision}


@contextmanager
def _connected(ray: ModuleType, address: str | None) -> Iterator[str]:
    """Join the cluster (or start a local Ray) for the run; a session the caller opened is left open."""
    if ray.is_initialized():
        yield "existing session"
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:  # a local Ray for this run only: no dashboard
        ray.init(include_dashboard=False)
    try:
        yield address or "local"
    finally:
        ray.shutdown()


def actor_resources(ray: ModuleType, options: RayOptions, *, pending: int) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) for this cluster, at most one actor per pending batch."""
    cluster = ray.cluster_resources()
    gpus = options.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if cluster.get("GPU", 0) > 0 else 0.0
    fits = int(cluster.get("CPU", 1) // options.cpus_per_actor)
    if gpus:
        fits = min(fits, int(cluster.get("GPU", 0) // gpus))
    actors = options.actors or max(fits, 1)
    return max(1, min(actors, pending)), options.cpus_per_actor, gpus


@dataclass(frozen=True)
class RayEngine:
    """A ``coder.run.Engine``: the pending batches go to Ray actors that each call ``load()`` once.

    ``load`` must pickle (a module-level function, or ``functools.partial`` of one).
    """

    load: Callable[[], Model]
    ray: RayOptions = RayOptions()

    def __call__(self, plan: InputPlan, *, model: Model, parts: PartsFolder, done: dict[int, dict[str, Any]],
                 progress: Progress, options: PredictOptions, llm: LLMStage | None) -> Scored:
        if llm is not None:
            raise UsageError("the LLM stage runs with --engine local only")
        batches, pending = plan_batches(plan, batch_size=options.batch_size, done=done)
        rows = {p.index: p.rows for p in pending}
        progress.update(plan.total_rows - sum(rows.values()))
        seconds: Counter = Counter()
        providers, precisions = set(), set()
        engine: dict[str, Any] = {"name": "ray"}
        if pending:  # else an empty dump, or a finished run resumed: no cluster needed
            ray = import_ray()
            with _connected(ray, self.ray.address) as address:
                actors, cpus, gpus = actor_resources(ray, self.ray, pending=len(pending))
                engine.update(address=address, actors=actors, cpus_per_actor=cpus, gpus_per_actor=gpus)
                log.info("scoring %d batches on %d Ray actors (%s CPU, %s GPU each)", len(pending), actors, cpus, gpus)
                resources = {"concurrency": actors, "num_cpus": cpus, "num_gpus": gpus}
                for row in self._scored(ray, pending, plan=plan, parts=parts, options=options, resources=resources):
                    if row["error"]:
                        raise WorkerError(row["error"], exit_code=row["exit_code"])
                    done[row["index"]] = json.loads(row["counts"])
                    seconds.update(stage_seconds(done[row["index"]]))
                    providers.add(row["execution_provider"])
                    precisions.add(row["precision"])
                    progress.update(rows[row["index"]])
        return Scored(
            batches=batches,
            fresh_rows=sum(rows.values()),
            stage_seconds=dict(seconds),
            execution_provider=",".join(sorted(providers)) or model.execution_provider,
            precision=",".join(sorted(precisions)) or model.precision,
            engine=engine,
        )

    def _scored(
        self,
        ray: ModuleType,
        pending: list[PendingBatch],
        *,
        plan: InputPlan,
        parts: PartsFolder,
        options: PredictOptions,
        resources: Mapping[str, Any],
    ) -> Iterator[dict[str, Any]]:
        """One result row per pending batch, in the order they finish."""
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts notes
        items = ray.data.from_items([p.to_item() for p in pending], override_num_blocks=len(pending))
        with warnings.catch_warnings():
            # Ray Data 2.60 takes max_restarts and max_task_retries only as ray_remote_args, which it
            # marks deprecated for Ray 2.64; the extra pins 2.60.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            results = items.map_batches(
                BatchCoder,
                batch_size=1,
                batch_format="pyarrow",
                fn_constructor_kwargs={"load": self.load, "plan": plan, "parts": parts, "options": options},
                **resources,
                max_restarts=self.ray.max_restarts,
                max_task_retries=self.ray.max_restarts,
            )
        return results.iter_rows()


def load_actor_model(model: Path, *, device: str, precision: str, codes_file: Path | None) -> Model:
    """What each actor loads: the model with the code list the driver resolved."""
    from coder.model.load import load_model

    return load_model(model, device=device, precision=precision, codes_file=codes_file)


def predict_notes_ray(
    source: str | Path,
    *,
    out: Path,
    model: Path | None = None,
    device: str = "auto",
    codes_file: Path | None = None,
    options: PredictOptions = PredictOptions(),
    ray: RayOptions = RayOptions(),
) -> RunSummary:
    """``coder predict --engine ray``: ``coder.predict.predict_notes`` with the batches coded on Ray actors.

    The actors load the model with ``device``; the driver loads it on CPU only to describe the run.
    """
    import_ray()  # a missing Ray fails before the model and the ontology load
    from coder.model.folder import default_model_path

    model_path = (model or default_model_path()).resolve()
    codes = codes_file.resolve() if codes_file else None
    engine = RayEngine(load=functools.partial(load_actor_model, model_path, device=device, precision=options.precision,
                                              codes_file=codes), ray=ray)
    return predict_notes(source, out=out, model=model_path, device="cpu", codes_file=codes, options=options, engine=engine)
