"""Threads a process computes on: its cores, capped by OMP_NUM_THREADS (Ray sets it per actor)."""

import pytest

from coder import cpus


@pytest.mark.parametrize(("limit", "expected"), [(None, 8), ("2", 2), ("16", 8), ("0", 8), ("lots", 8), (" 3 ", 3)],
                         ids=["unset", "below", "above", "zero", "not-a-number", "spaces"])
def test_omp_num_threads_caps_threads(monkeypatch, limit, expected):
    if limit is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", limit)
    assert cpus.capped(8) == expected


def test_core_counts_are_at_least_one_and_agree():
    assert 1 <= cpus.physical_cores() <= cpus.logical_cpus()
