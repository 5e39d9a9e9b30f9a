"""The processes engine of ``coder predict --workers N``: the local engine's batches, coded by N
worker processes on this machine.

One process codes one batch at a time, and most of a batch's stages (the lexicons, the ontology
search, the reranker, writing) run on one core: while they do, the other cores wait. N workers,
each with its own model and its share of the cores (``OMP_NUM_THREADS``, which ``coder.cpus`` keeps
to), keep every core busy. The batches, their parts, the duplicate rule and resuming are the Ray
engine's (``coder.engines.batches``), so a run writes the same rows as a local run and either
engine resumes the other's. Workers are spawned, not forked: no onnxruntime thread pool or lock
crosses into them. Each holds a model (about 1.5 GB for the shipped one), and the driver one more.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coder.cpus import compute_threads
from coder.engines.batches import BatchCoder, PendingBatch, Tally, worker_load
from coder.errors import UsageError
from coder.io.parts import PartsFolder
from coder.io.progress import Progress
from coder.io.read import InputPlan
from coder.llm.vote import LLMStage
from coder.predict import predict_notes
from coder.run import EngineReport, PredictOptions, RunSummary

if TYPE_CHECKING:
    from coder.model.load import Model

log = logging.getLogger(__name__)

_worker: BatchCoder | None = None
"""The worker process's coder, made once by ``_start``."""


def _start(load: Callable[[], Model], plan: InputPlan, parts: PartsFolder, options: PredictOptions, threads: int) -> None:
    """A worker's start: its share of the cores, then its model."""
    global _worker
    os.environ["OMP_NUM_THREADS"] = str(threads)
    _worker = BatchCoder(load=load, plan=plan, parts=parts, options=options, where="worker process")


def _code(item: dict[str, Any]) -> dict[str, Any]:
    assert _worker is not None, "_start runs first in every worker"
    return _worker.code(PendingBatch.from_item(item))


@dataclass(frozen=True)
class ProcessesEngine:
    """A ``coder.run.Engine``: the pending batches go to ``workers`` processes that each call ``load()``
    once (``load`` must pickle: a module-level function, or ``functools.partial`` of one)."""

    load: Callable[[], Model]
    workers: int

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UsageError(f"--workers must be at least 1, got {self.workers}")

    def __call__(self, plan: InputPlan, *, model: Model, parts: PartsFolder, done: dict[int, dict[str, Any]],
                 progress: Progress, options: PredictOptions, llm: LLMStage | None) -> EngineReport:
        if llm is not None:
            raise UsageError("the LLM stage runs in one process: drop --llm or --workers")
        batches, pending, tally = Tally.start(plan, batch_size=options.batch_size, done=done, progress=progress)
        workers = max(1, min(self.workers, len(pending)))
        threads = max(1, compute_threads() // workers)
        engine = {"name": "processes", "workers": workers, "threads_per_worker": threads}
        if pending:  # else an empty dump, or a finished run resumed: no worker needed
            log.info("coding %d batches in %d worker processes (%d threads each)", len(pending), workers, threads)
            pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_start,
                                       initargs=(self.load, plan, parts, options, threads))
            try:
                for future in as_completed([pool.submit(_code, p.to_item()) for p in pending]):
                    tally.add(future.result())
            finally:  # on a failure, batches not started are dropped; a resume codes them
                pool.shutdown(wait=True, cancel_futures=True)
        return tally.report(batches=batches, model=model, engine=engine)


def predict_notes_processes(source: str | Path, *, out: Path, workers: int, model: Path | None = None, device: str = "auto",
                            codes_file: Path | None = None, options: PredictOptions = PredictOptions()) -> RunSummary:
    """``coder predict --workers N``: ``coder.predict.predict_notes`` with the batches coded in worker processes.

    The workers load the model with ``device``; the driver loads it on CPU only to describe the run."""
    model_path, codes, load = worker_load(model, device=device, precision=options.precision, codes_file=codes_file)
    engine = ProcessesEngine(load=load, workers=workers)
    return predict_notes(source, out=out, model=model_path, device="cpu", codes_file=codes, options=options, engine=engine)
