"""The Ray engine of ``coder predict``: a run's batches, coded by a pool of Ray actors.

The driver plans the run as for any engine (``coder.run.run_batches``: same files, same batches,
same part names, same fingerprint, the duplicate-id rule settled over the id column first). Each
actor loads the model once, then runs the run's worker (``coder.batches.BatchWorker``) on every
batch it is given: it reads that batch's rows, screens them, codes them and writes the batch's
parts. The driver then combines the parts and writes the quarantine and the manifest.
The Ray dataset is the list of pending batches, not ``ray.data.read_parquet`` blocks: those carry
no row numbers within a file and do not fall on the run's batch boundaries, which the
quarantine's ``row`` column, the duplicate rule and resuming by batch all need.

A batch is the unit of work, of retry and of resume: an actor that dies is restarted and its batch
retried, and the retry rewrites the same part files, so no note is lost or written twice.
Workers on other machines need the input files, the model folder and the output's folder at the
same paths (a shared filesystem).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from coder.batches import BatchResult, BatchWorker, PendingBatch
from coder.engines.remote import RemoteWorker, result_of
from coder.errors import MissingDependencyError, UsageError

if TYPE_CHECKING:
    from coder.assembly import Model

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
    """A ``coder.batches.Engine``: the pending batches go to Ray actors that each call ``load()`` once.

    ``load`` must pickle (a module-level function, or ``functools.partial`` of one).
    """

    load: Callable[[], Model]
    ray: RayOptions = RayOptions()

    def __call__(self, worker: BatchWorker, pending: Sequence[PendingBatch], *,
                 record: Callable[[BatchResult], None]) -> dict[str, Any]:
        engine: dict[str, Any] = {"name": "ray"}
        if pending:  # else an empty dump, or a finished run resumed: no cluster needed
            ray = import_ray()
            with _connected(ray, self.ray.address) as address:
                actors, cpus, gpus = actor_resources(ray, self.ray, pending=len(pending))
                engine.update(address=address, actors=actors, cpus_per_actor=cpus, gpus_per_actor=gpus)
                log.info("scoring %d batches on %d Ray actors (%s CPU, %s GPU each)", len(pending), actors, cpus, gpus)
                resources = {"concurrency": actors, "num_cpus": cpus, "num_gpus": gpus}
                for row in self._coded(ray, worker, pending, resources=resources):
                    record(result_of(row))
        return engine

    def _coded(self, ray: ModuleType, worker: BatchWorker, pending: Sequence[PendingBatch], *,
               resources: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """One result row per pending batch, in the order they finish."""
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts notes
        items = ray.data.from_items([p.to_item() for p in pending], override_num_blocks=len(pending))
        with warnings.catch_warnings():
            # Ray Data 2.60 takes max_restarts and max_task_retries only as ray_remote_args, which it
            # marks deprecated for Ray 2.64; the extra pins 2.60.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            results = items.map_batches(
                RemoteWorker,
                batch_size=1,
                batch_format="pyarrow",
                fn_constructor_kwargs={"load": self.load, "worker": worker, "where": "Ray worker"},
                **resources,
                max_restarts=self.ray.max_restarts,
                max_task_retries=self.ray.max_restarts,
            )
        return results.iter_rows()

