"""What the engines that code batches away from the driver share (``coder.engines.processes``,
``coder.engines.ray``): a remote worker that loads its own model once and runs the run's
``coder.batches.BatchWorker`` on each batch it is given, and its result rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from coder.batches import BatchResult, BatchWorker, PendingBatch
from coder.errors import CoderError, WorkerError

if TYPE_CHECKING:
    from coder.assembly import Model

RESULT_SCHEMA = pa.schema(
    {"index": pa.int64(), "counts": pa.string(), "ran_on": pa.string(), "error": pa.string(), "exit_code": pa.int64()}
)
"""A batch's result row: ``BatchResult`` with its counts as JSON, or the worker's CoderError."""


class RemoteWorker:
    """A worker process of ``coder.engines.processes`` or a Ray actor: calls ``load()`` once, then
    codes and writes whole batches with ``worker``.

    A CoderError comes back as a result row, not raised: across Ray or a process pool it would keep
    neither its class nor its exit code. ``where`` names the worker in its message.
    """

    def __init__(self, *, load: Callable[[], Model], worker: BatchWorker, where: str = "worker") -> None:
        self._worker = worker
        self._where = where
        self._model: Model | None = None
        self._load_error: CoderError | None = None
        try:
            self._model = load()
        except CoderError as error:
            self._load_error = error

    def __call__(self, items: pa.Table) -> pa.Table:
        """Ray Data's call: rows of ``PendingBatch.to_item()`` -> one row per batch in ``RESULT_SCHEMA``."""
        return pa.Table.from_pylist([self.code(item) for item in items.to_pylist()], schema=RESULT_SCHEMA)

    def code(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """Code and write the batch of ``item`` (``PendingBatch.to_item()``); its result row (``RESULT_SCHEMA``)."""
        pending = PendingBatch.from_item(item)
        try:
            if self._load_error is not None:
                raise self._load_error
            result = self._worker(self._model, pending)
        except CoderError as error:
            return {"index": pending.index, "error": f"{type(error).__name__} on a {self._where}: {error}",
                    "exit_code": error.exit_code}
        return {"index": result.index, "counts": json.dumps(result.counts), "ran_on": result.ran_on}


def result_of(row: Mapping[str, Any]) -> BatchResult:
    """The batch's result; a worker's CoderError ends the run with its message and exit code."""
    if row.get("error"):
        raise WorkerError(row["error"], exit_code=row["exit_code"])
    return BatchResult(index=row["index"], counts=json.loads(row["counts"]), ran_on=row["ran_on"])
