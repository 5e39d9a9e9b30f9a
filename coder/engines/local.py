"""The local engine of ``coder predict``: the pending batches, in input order, in this process."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coder.batches import BatchResult, BatchWorker, PendingBatch

if TYPE_CHECKING:
    from coder.llm.vote import LLMStage
    from coder.assembly import Model


@dataclass(frozen=True)
class LocalEngine:
    """A ``coder.batches.Engine`` on ``model``, loaded here, with the LLM stage when it is on (it runs
    in this process only); the batches are read in one pass over the files (``BatchWorker.stream``)."""

    model: Model
    llm: LLMStage | None = None

    def __call__(self, worker: BatchWorker, pending: Sequence[PendingBatch], *,
                 record: Callable[[BatchResult], None]) -> dict[str, Any]:
        for batch, rows in worker.stream(pending):
            record(worker(self.model, batch, rows=rows, llm=self.llm))
        return {"name": "local"}
