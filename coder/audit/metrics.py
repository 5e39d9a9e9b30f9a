"""Ranking metrics, computed exactly as CodiEsp's official scorer does.

CodiEsp (codiespD_P_evaluation.py via trectools): per note, predictions are taken in rank
order, lower-cased, repeated codes and codes outside the valid code list dropped, ranks
renumbered; AP = (1/R) * sum of precision@k over the ranks k that hit a gold code, with R the
number of distinct gold codes of the note. The mean runs over the notes that have at least one
valid prediction (a gold note without predictions is left out, as trec_eval does without -c).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence


def clean_ranking(
    ranked: Iterable[str], *, is_valid: Callable[[str], bool] | None = None, limit: int = 1000
) -> list[str]:
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
    """AP of an already cleaned ranking against a set of (lower-cased) gold codes."""
    if not gold:
        return 0.0
    hits = 0
    total = 0.0
    for k, code in enumerate(ranked, start=1):
        if code in gold:
            hits += 1
            total += hits / k
    return total / len(gold)


def mean_average_precision(
    predictions: Mapping[str, Sequence[str]],
    gold: Mapping[str, Collection[str]],
    *,
    is_valid: Callable[[str], bool] | None = None,
) -> float:
    """CodiEsp MAP. ``predictions``: note id -> codes in rank order; ``gold``: note id -> codes.

    Notes with no valid prediction are left out of the mean (official behaviour); notes that
    are predicted but have no gold codes count as AP 0.
    """
    scores = []
    for note_id, ranked in predictions.items():
        cleaned = clean_ranking(ranked, is_valid=is_valid)
        if not cleaned:
            continue
        truth = {code.lower() for code in gold.get(note_id, ())}
        scores.append(average_precision(cleaned, truth))
    return sum(scores) / len(scores) if scores else 0.0
