"""Verify an export like optimum does: same inputs through torch and onnxruntime, every output compared."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from coder.errors import ExportParityError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputCheck:
    """One output compared: float outputs by max abs diff, index outputs by the share that differ."""

    name: str
    measure: str  # "max_abs_diff" or "share_differing"
    value: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(self.value <= self.tolerance)

    def __str__(self) -> str:
        return f"{self.name}: {self.measure} {self.value:.3g} (tolerance {self.tolerance:.3g})"


def compare_outputs(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    *,
    atol: float,
    index_tolerance: float = 0.01,
    label: str = "onnx",
) -> list[OutputCheck]:
    """Compare every output; raise one ExportParityError listing all that fail.

    Index outputs (attention peaks) may flip between near-equal tokens, so for them the share
    of differing entries is bounded by ``index_tolerance`` instead.
    """
    missing = sorted(set(reference) - set(candidate))
    checks: list[OutputCheck] = []
    for name, expected in reference.items():
        if name in missing:
            continue
        found = candidate[name]
        if found.shape != expected.shape:
            raise ExportParityError(f"{label}: output {name} has shape {found.shape}, torch gives {expected.shape}")
        if np.issubdtype(expected.dtype, np.integer):
            checks.append(OutputCheck(name, "share_differing", float(np.mean(found != expected)) if expected.size else 0.0, index_tolerance))
        else:
            diff = float(np.max(np.abs(found.astype(np.float64) - expected.astype(np.float64)))) if expected.size else 0.0
            checks.append(OutputCheck(name, "max_abs_diff", diff, atol))
    failures = [str(check) for check in checks if not check.ok] + [f"{name}: missing from {label}" for name in missing]
    if failures:
        raise ExportParityError(f"{label} differs from torch: " + "; ".join(failures))
    for check in checks:
        logger.info("%s parity ok: %s", label, check)
    return checks
