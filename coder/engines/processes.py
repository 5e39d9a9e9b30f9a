"""The processes engine of ``coder predict --workers N``: the local engine's batches, coded by N
worker processes on this machine.

One process codes one batch at a time, and most of a batch's stages (the lexicons, the ontology
search, the reranker, writing) run on one core: while they do, the other cores wait. N workers,
each with its own model and its share of the cores (``OMP_NUM_THREADS``, which ``coder.cpus`` keeps
to), keep every core busy. The batches, their parts, the duplicate rule and resuming are every
engine's (``coder.batches``), so a run writes the same rows as a local run and any engine resumes
another's. Workers are spawned, not forked: no onnxruntime thread pool or lock crosses into them.
Each holds a model (about 1.5 GB for the shipped one); the driver loads none.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from typing import TYPE_CHECKING, Any

from coder.batches import BatchResult, BatchWorker, PendingBatch
from coder.cpus import compute_threads
from coder.engines.remote import RemoteWorker, result_of
from coder.errors import UsageError

if TYPE_CHECKING:
    from coder.assembly import Model

log = logging.getLogger(__name__)

_worker: RemoteWorker | None = None
"""The worker process's coder, made once by ``_start``."""


def _start(load: Callable[[], Model], worker: BatchWorker, threads: int) -> None:
    """A worker's start: its share of the cores, then its model."""
    global _worker
    os.environ["OMP_NUM_THREADS"] = str(threads)
    _worker = RemoteWorker(load=load, worker=worker, where="worker process")


def _code(item: dict[str, Any]) -> dict[str, Any]:
    assert _worker is not None, "_start runs first in every worker"
    return _worker.code(item)


@dataclass(frozen=True)
class ProcessesEngine:
    """A ``coder.batches.Engine``: the pending batches go to ``workers`` processes that each call ``load()``
    once (``load`` must pickle: a module-level function, or ``functools.partial`` of one)."""

    load: Callable[[], Model]
    workers: int

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UsageError(f"--workers must be at least 1, got {self.workers}")

    def __call__(self, worker: BatchWorker, pending: Sequence[PendingBatch], *,
                 record: Callable[[BatchResult], None]) -> dict[str, Any]:
        workers = max(1, min(self.workers, len(pending)))
        threads = max(1, compute_threads() // workers)
        if pending:  # else an empty dump, or a finished run resumed: no worker needed
            log.info("coding %d batches in %d worker processes (%d threads each)", len(pending), workers, threads)
            pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_start,
                                       initargs=(self.load, worker, threads))
            try:
                for future in as_completed([pool.submit(_code, batch.to_item()) for batch in pending]):
                    record(result_of(future.result()))
            finally:  # on a failure, batches not started are dropped; a resume codes them
                pool.shutdown(wait=True, cancel_futures=True)
        return {"name": "processes", "workers": workers, "threads_per_worker": threads}
