"""The rerank stage: each candidate gets its ``score`` and decision ``threshold``."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from coder.candidates.features import add_features
from coder.errors import ModelBundleError
from coder.rerank.reranker import Reranker
from coder.schema import CODE, PLM_ICD, SCORE, SYSTEM, THRESHOLD

STACK_PLM_TOP_K = 50  # PLM-ICD codes per note and system that rerankers read (fit and predict alike)


@dataclass(frozen=True)
class Ranking:
    """How candidates are scored: a reranker per set of sources, or none (then PLM-ICD's own
    score and its per-label thresholds)."""

    rerankers: dict[tuple[str, ...], Reranker]
    prior: pl.DataFrame | None
    """Training notes per code (``candidates.features.code_prior``): a reranker feature."""
    label_thresholds: pl.DataFrame
    """(system, code, threshold) of PLM-ICD's labels."""

    def plm_request(self, *, top_k: int, threshold_only: bool) -> dict[str, int | bool]:
        """What PLM-ICD should propose per note and system (``PlmIcdScorer.score`` options): the
        number of codes the rerankers were fitted with; without rerankers the ``top_k`` best and,
        for ``threshold_only``, every code above its label threshold as well."""
        if self.rerankers:
            return {"top_n": STACK_PLM_TOP_K, "above_threshold": False}
        return {"top_n": top_k, "above_threshold": threshold_only}


def rerank(candidates: pl.DataFrame, *, ranking: Ranking, sources: tuple[str, ...]) -> pl.DataFrame:
    """``candidates`` (merged frames of ``sources``, in evidence priority) with ``score`` and ``threshold``:
    the calibrated probability of the reranker fitted on exactly these sources and its system's cut."""
    if not ranking.rerankers:
        return candidates.with_columns(pl.col(PLM_ICD).alias(SCORE)).join(
            ranking.label_thresholds, on=[SYSTEM, CODE], how="left", maintain_order="left")
    reranker = ranking.rerankers.get(sources)
    if reranker is None:
        raise ModelBundleError(f"the model has no reranker for the sources {'+'.join(sources)} "
                               f"(it has: {', '.join('+'.join(s) for s in ranking.rerankers)}); give the dump the columns it reads")
    scored = reranker.predict(add_features(candidates, prior=ranking.prior, sources=sources))
    return scored.with_columns(pl.col(SYSTEM).replace_strict(reranker.thresholds_, default=1.0, return_dtype=pl.Float64).alias(THRESHOLD))
