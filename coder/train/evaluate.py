"""Dev metrics per system from a score matrix: CodiEsp MAP, P@5, P@10."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from coder.audit.metrics import mean_average_precision
from coder.model.folder import Label

RANK_LIMIT = 1000  # the official scorer reads at most 1,000 codes per note


def ranked_codes(scores: np.ndarray, *, labels: Sequence[Label], system: str, limit: int = RANK_LIMIT) -> list[list[str]]:
    """Per note, the codes of ``system`` by descending score. scores: [n_notes, n_labels]."""
    cols = np.array([j for j, label in enumerate(labels) if label.system == system], dtype=np.int64)
    if cols.size == 0:
        return [[] for _ in range(scores.shape[0])]
    order = cols[np.argsort(-scores[:, cols], axis=1, kind="stable")[:, :limit]]
    return [[labels[j].code for j in row] for row in order]


def ranking_metrics(
    scores: np.ndarray,
    *,
    note_ids: Sequence[str],
    labels: Sequence[Label],
    gold: Mapping[str, Mapping[str, set[str]]],
) -> dict[str, dict[str, float]]:
    """system -> {map, p@5, p@10, notes} over the notes with at least one gold code of that system.

    scores: [n_notes, n_labels] aligned with ``note_ids``; gold: system -> note id -> codes.
    """
    metrics: dict[str, dict[str, float]] = {}
    for system, truth in gold.items():
        rows = [i for i, note_id in enumerate(note_ids) if truth.get(note_id)]
        if not rows:
            continue
        ranked = ranked_codes(scores[rows], labels=labels, system=system)
        ids = [note_ids[i] for i in rows]
        predictions = dict(zip(ids, ranked, strict=True))
        result = {"map": mean_average_precision(predictions, truth), "notes": float(len(rows))}
        for k in (5, 10):
            result[f"p@{k}"] = float(np.mean([len(set(codes[:k]) & truth[i]) / k for i, codes in zip(ids, ranked, strict=True)]))
        metrics[system] = result
    return metrics


def micro_f1(
    predicted: np.ndarray, targets: np.ndarray, *, labels: Sequence[Label], gold: Mapping[str, Mapping[str, set[str]]]
) -> dict[str, float]:
    """system -> micro-F1 of thresholded predictions, counting every gold code (also those outside ``labels``).

    predicted, targets: [n_notes, n_labels] bool / 0-1 over the same notes as ``gold``.
    """
    systems = np.array([label.system for label in labels])
    result = {}
    for system, truth in gold.items():
        cols = systems == system
        tp = float((predicted[:, cols] & (targets[:, cols] > 0.5)).sum())
        fp = float(predicted[:, cols].sum()) - tp
        n_gold = sum(len(codes) for codes in truth.values())
        result[system] = 2 * tp / (tp + fp + n_gold) if tp + fp + n_gold else 0.0
    return result
