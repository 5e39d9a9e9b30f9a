"""Decision thresholds tuned on dev: one per system (max micro-F1), then per code where it helps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from coder.errors import NotFittedError
from coder.metrics import f1 as _f1


class ThresholdTuner:
    """Fit thresholds on scores [n_notes, n_labels] and 0/1 labels of the same shape.

    For each system, the threshold on ``grid`` that maximises micro-F1 over the system's labels;
    then, label by label, a threshold of its own if that raises the system's dev micro-F1 (others
    held at the system threshold), for labels with at least ``min_positives`` dev positives.
    Ties go to the lowest threshold on the grid.
    """

    def __init__(self, *, grid: Sequence[float] = tuple(np.round(np.arange(0.02, 0.96, 0.02), 2)), per_code: bool = True, min_positives: int = 1):
        self.grid = grid
        self.per_code = per_code
        self.min_positives = min_positives

    def fit(self, scores: np.ndarray, labels: np.ndarray, *, systems: Sequence[str]) -> ThresholdTuner:
        grid = np.asarray(self.grid, dtype=np.float64)
        systems_arr = np.asarray(systems)
        positive = labels > 0.5
        predicted = scores[None, :, :] >= grid[:, None, None]  # [n_grid, n_notes, n_labels]
        tp = (predicted & positive).sum(axis=1)  # [n_grid, n_labels]
        fp = (predicted & ~positive).sum(axis=1)
        fn = positive.sum(axis=0)[None, :] - tp
        thresholds = np.zeros(scores.shape[1], dtype=np.float64)
        self.system_thresholds_: dict[str, float] = {}
        self.dev_f1_: dict[str, float] = {}
        for system in sorted(set(systems)):
            cols = np.flatnonzero(systems_arr == system)
            f1 = _f1(tp[:, cols].sum(1), fp[:, cols].sum(1), fn[:, cols].sum(1))
            best = int(np.argmax(f1))
            thresholds[cols] = grid[best]
            totals = np.array([tp[best, cols].sum(), fp[best, cols].sum(), fn[best, cols].sum()], dtype=np.float64)
            if self.per_code:
                totals = self._per_code(cols, best, tp, fp, fn, totals, thresholds, positive, grid)
            self.system_thresholds_[system] = float(grid[best])
            self.dev_f1_[system] = float(_f1(*totals))
        self.thresholds_ = thresholds
        return self

    def _per_code(self, cols, best, tp, fp, fn, totals, thresholds, positive, grid) -> np.ndarray:
        """Give each label its own threshold when swapping its counts raises the system micro-F1."""
        for col in cols:
            if positive[:, col].sum() < self.min_positives:
                continue
            own = np.stack([tp[:, col], fp[:, col], fn[:, col]], axis=1).astype(np.float64)  # [n_grid, 3]
            candidates = totals[None, :] - own[best][None, :] + own  # system totals with this label moved
            f1 = _f1(candidates[:, 0], candidates[:, 1], candidates[:, 2])
            choice = int(np.argmax(f1))
            if f1[choice] > _f1(*totals) + 1e-12:
                thresholds[col] = grid[choice]
                totals = candidates[choice]
        return totals

    def predict(self, scores: np.ndarray) -> np.ndarray:
        """[n_notes, n_labels] bool: score at or above the label's threshold."""
        if not hasattr(self, "thresholds_"):
            raise NotFittedError("ThresholdTuner is not fitted: call fit(scores, labels, systems=...) first")
        return scores >= self.thresholds_[None, :]


def micro_f1(predicted: np.ndarray, targets: np.ndarray, *, systems: Sequence[str],
             gold: Mapping[str, Mapping[str, set[str]]]) -> dict[str, float]:
    """system -> micro-F1 of thresholded predictions, counting every gold code (also those without a label).

    predicted, targets: [n_notes, n_labels] bool / 0-1 over the same notes as ``gold``; ``systems``: per label."""
    labels = np.asarray(systems)
    result = {}
    for system, truth in gold.items():
        cols = labels == system
        tp = float((predicted[:, cols] & (targets[:, cols] > 0.5)).sum())
        fp = float(predicted[:, cols].sum()) - tp
        n_gold = sum(len(codes) for codes in truth.values())
        result[system] = float(_f1(tp, fp, n_gold - tp))
    return result
