"""How many threads this process computes on.

A process uses its cores: the physical ones for onnxruntime's matmuls (hyper-threads share a core's
matmul units), the logical ones for the ontology search's sparse products. ``OMP_NUM_THREADS``,
when set, caps both: Ray sets it to each actor's CPUs, and a batch scheduler or a user sharing a
machine sets it too. Without the cap, every Ray actor ran onnxruntime on all the machine's cores
beside the others (`python benchmarks/ray_engine.py`).
"""

from __future__ import annotations

import os


def logical_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores among ``logical_cpus()``."""
    logical = logical_cpus()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            siblings = cores = None
            for line in handle:
                if line.startswith("siblings") and siblings is None:
                    siblings = int(line.split(":")[1])
                elif line.startswith("cpu cores") and cores is None:
                    cores = int(line.split(":")[1])
        if siblings and cores:
            return max(1, logical * cores // siblings)
    except (OSError, ValueError):
        pass
    return max(1, logical)


def capped(threads: int) -> int:
    """``threads``, or fewer where ``OMP_NUM_THREADS`` (a positive integer) allows fewer; at least 1."""
    limit = os.environ.get("OMP_NUM_THREADS", "").strip()
    if limit.isdigit() and int(limit) > 0:
        threads = min(threads, int(limit))
    return max(1, threads)


def compute_threads() -> int:
    """Threads for onnxruntime's kernels: the physical cores, capped."""
    return capped(physical_cores())
