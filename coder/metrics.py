"""Ranking and classification metrics, defined once: CodiEsp MAP, P@k, R@k, F1 and the F1-best cut.

Audit, training, reranker fitting, export checks and the benchmarks all score with these.

CodiEsp's official scorer (codiespD_P_evaluation.py via trectools): per note, predictions are
taken in rank order, lower-cased, repeated codes and codes outside the valid code list dropped,
ranks renumbered; AP = (1/R) * sum of precision@k over the ranks k that hit a gold code, with R
the number of distinct gold codes of the note. The official mean (``map``) runs over the notes
that have gold codes *and* at least one valid prediction (trectools' ``get_map`` divides by the
queries common to run and qrels). ``map_all_notes`` divides by every note with gold codes instead,
so a note the run left without codes counts 0. P@k and R@k average over the same notes as ``map``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from coder.rank import by_score
from coder.schema import CODE, NOTE_ID, SYSTEM, SYSTEMS

RANK_LIMIT = 1000  # the official scorer reads at most 1,000 codes per note

Rankings = Mapping[str, Sequence[str]]
"""note id -> codes, best first."""
GoldSets = Mapping[str, Collection[str]]
"""note id -> gold codes."""


def clean_ranking(ranked: Iterable[str], *, is_valid: Callable[[str], bool] | None = None,
                  limit: int = RANK_LIMIT) -> list[str]:
    """Lower-case, drop repeats (first kept) and invalid codes, keep at most ``limit``."""
    seen: set[str] = set()
    out: list[str] = []
    for code in ranked:
        key = code.lower()
        if key in seen or (is_valid is not None and not is_valid(code)):
            continue
        seen.add(key)
        out.append(key)
        if len(out) == limit:
            break
    return out


def average_precision(ranked: Sequence[str], gold: Collection[str]) -> float:
    """AP of a cleaned ranking against a set of lower-cased gold codes (0 without gold codes)."""
    if not gold:
        return 0.0
    hits = 0
    total = 0.0
    for k, code in enumerate(ranked, start=1):
        if code in gold:
            hits += 1
            total += hits / k
    return total / len(gold)


@dataclass(frozen=True)
class RankingScores:
    """Ranking metrics of one system over a set of notes."""

    map: float
    """CodiEsp's official MAP: mean AP over ``notes``."""
    map_all_notes: float
    """Mean AP over every note with gold codes (``gold_notes``), a note without predictions counting 0."""
    notes: int
    """Notes with gold codes and at least one valid prediction: what ``map``, P@k and R@k average over."""
    gold_notes: int
    """Notes with gold codes."""
    precision_at: dict[int, float] = field(default_factory=dict)
    recall_at: dict[int, float] = field(default_factory=dict)

    @property
    def gold_notes_without_predictions(self) -> int:
        return self.gold_notes - self.notes

    def as_dict(self) -> dict[str, float | int]:
        """``map``, ``map_all_notes``, ``p@k``, ``r@k`` and the note counts, flat (the JSON shape)."""
        out: dict[str, float | int] = {"map": self.map, "map_all_notes": self.map_all_notes, "notes": self.notes,
                                       "gold_notes": self.gold_notes,
                                       "gold_notes_without_predictions": self.gold_notes_without_predictions}
        out |= {f"p@{k}": v for k, v in self.precision_at.items()}
        out |= {f"r@{k}": v for k, v in self.recall_at.items()}
        return out


def ranking_scores(predictions: Rankings, gold: GoldSets, *, is_valid: Callable[[str], bool] | None = None,
                   ks: Sequence[int] = ()) -> RankingScores:
    """MAP (official and over all gold notes), P@k and R@k of ``predictions`` against ``gold``.

    Predicted notes without gold codes are left out, as the official scorer does."""
    truth = {note: {code.lower() for code in codes} for note, codes in gold.items() if codes}
    aps, at_k = [], []
    for note_id, ranked in predictions.items():
        codes = truth.get(note_id)
        cleaned = clean_ranking(ranked, is_valid=is_valid) if codes else []
        if cleaned:
            aps.append(average_precision(cleaned, codes))
            at_k.append([sum(code in codes for code in cleaned[:k]) for k in ks] + [len(codes)])
    hits = np.asarray(at_k, dtype=np.float64).reshape(len(at_k), len(ks) + 1)
    return RankingScores(
        map=float(np.mean(aps)) if aps else 0.0,
        map_all_notes=float(np.sum(aps) / len(truth)) if truth else 0.0,
        notes=len(aps),
        gold_notes=len(truth),
        precision_at={k: float(np.mean(hits[:, i] / k)) if aps else 0.0 for i, k in enumerate(ks)},
        recall_at={k: float(np.mean(hits[:, i] / hits[:, -1])) if aps else 0.0 for i, k in enumerate(ks)},
    )


def mean_average_precision(predictions: Rankings, gold: GoldSets, *,
                           is_valid: Callable[[str], bool] | None = None) -> float:
    """CodiEsp's official MAP (see ``ranking_scores``)."""
    return ranking_scores(predictions, gold, is_valid=is_valid).map


def f1(tp: np.ndarray | float, fp: np.ndarray | float, fn: np.ndarray | float) -> np.ndarray:
    """F1 = 2tp / (2tp + fp + fn), elementwise; 0 where nothing was predicted or gold."""
    denominator = 2 * np.asarray(tp, dtype=np.float64) + fp + fn
    return np.where(denominator > 0, 2 * np.asarray(tp, dtype=np.float64) / np.maximum(denominator, 1e-12), 0.0)


def prf(tp: float, fp: float, fn: float) -> dict[str, float]:
    """Precision, recall and F1 of counts."""
    return {"precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
            "f1": float(f1(tp, fp, fn))}


def best_f1_cut(scores: np.ndarray, hits: np.ndarray, *, n_gold: int) -> float:
    """The score cut (keep ``score >= cut``) that maximises micro F1 of candidates with ``scores``
    [n] and gold flags ``hits`` [n], when ``n_gold`` gold codes exist (some never proposed)."""
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(hits[order])
    kept = np.arange(1, len(order) + 1)
    return float(scores[order][int(f1(tp, kept - tp, n_gold - tp).argmax())])


def rankings(frame: pl.DataFrame, *, score: str) -> dict[str, dict[str, list[str]]]:
    """system -> note id -> codes of ``frame`` by descending ``score``, equal scores by code (``coder.rank.by_score``)."""
    out: dict[str, dict[str, list[str]]] = {}
    ordered = by_score(frame, score)
    for (system,), part in ordered.group_by(SYSTEM):
        out[system] = {note_id: grp[CODE].to_list() for (note_id,), grp in part.group_by(NOTE_ID, maintain_order=True)}
    return out


def gold_sets(codes: pl.DataFrame) -> dict[str, dict[str, set[str]]]:
    """system -> note id -> gold codes of a GOLD_SCHEMA frame."""
    out: dict[str, dict[str, set[str]]] = {}
    for note_id, code, system in codes.select(NOTE_ID, CODE, SYSTEM).iter_rows():
        out.setdefault(system, {}).setdefault(note_id, set()).add(code)
    return out


def system_scores(ranked: Mapping[str, Rankings], truth: Mapping[str, GoldSets], *,
                  ks: Sequence[int] = (5,)) -> dict[str, RankingScores]:
    """Per system of ``SYSTEMS``, the ranking metrics of its rankings (``rankings``) against its gold
    sets (``gold_sets``); a system absent from either side is scored on empty mappings."""
    return {system: ranking_scores(ranked.get(system, {}), truth.get(system, {}), ks=ks) for system in SYSTEMS}


def matrix_scores(scores: np.ndarray, *, note_ids: Sequence[str], labels: Sequence[tuple[str, str]],
                  gold: Mapping[str, GoldSets], ks: Sequence[int] = (5, 10)) -> dict[str, RankingScores]:
    """Per system, the ranking metrics of a score matrix [n_notes, n_labels] whose columns are
    ``labels`` ((system, code) pairs), every label ranked, over the notes with gold codes of the
    system (``gold``: system -> note id -> codes)."""
    out = {}
    for system, truth in gold.items():
        # the system's columns by code: the stable sort below then breaks equal scores by code (coder.rank)
        cols = np.array(sorted((j for j, (label_system, _) in enumerate(labels) if label_system == system),
                               key=lambda j: labels[j][1]), dtype=np.int64)
        rows = [i for i, note_id in enumerate(note_ids) if truth.get(note_id)]
        if not rows or not cols.size:
            continue
        order = cols[np.argsort(-scores[np.ix_(rows, cols)], axis=1, kind="stable")[:, :RANK_LIMIT]]
        predictions = {note_ids[i]: [labels[j][1] for j in ranked] for i, ranked in zip(rows, order, strict=True)}
        out[system] = ranking_scores(predictions, truth, ks=ks)
    return out
