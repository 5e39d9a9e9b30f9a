"""Rank, threshold and top-k, done once: scored candidates in, PREDICTION_SCHEMA rows out."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

from coder.schema import ABOVE_THRESHOLD, CODE, DESCRIPTION, NOTE_ID, PREDICTION_SCHEMA, RANK, SCORE, SYSTEM, THRESHOLD


def _best_first(score: str) -> tuple[list[str], list[bool]]:
    """The one order of every ranking within a note and system, as sort keys and their ``descending``:
    descending ``score``, equal scores by code."""
    return [score, CODE], [True, False]


def score_rank(column: str) -> pl.Expr:
    """The rank (1 = best, Int32) of ``column`` in its note and system, in ``by_score``'s order
    (equal scores by code, whatever the rows' order); null where ``column`` is null."""
    keys, descending = _best_first(column)
    rank = pl.int_range(pl.len()).sort_by(keys, descending=descending, nulls_last=True).arg_sort() + 1
    return pl.when(pl.col(column).is_not_null()).then(rank.over(NOTE_ID, SYSTEM)).cast(pl.Int32)


def within_top(scores: np.ndarray, k: int) -> np.ndarray:
    """A mask of ``scores`` ([..., n]) at or above the ``k``-th largest of their row (last axis): the
    best ``k`` and every score tied with the ``k``-th, so that a cut at ``score_rank`` <= k breaks that tie."""
    if k >= scores.shape[-1]:
        return np.ones(scores.shape, dtype=bool)
    return scores >= -np.partition(-scores, k - 1, axis=-1)[..., k - 1 : k]


def by_score(frame: pl.DataFrame, score: str = SCORE) -> pl.DataFrame:
    """``frame`` by note, system and descending ``score``, equal scores by code: the order of the output's
    ranks and of every ranking a metric reads (a sort that leaves ties unordered could move a figure)."""
    keys, descending = _best_first(score)
    return frame.sort([NOTE_ID, SYSTEM, *keys], descending=[False, False, *descending])


def ranked(frame: pl.DataFrame) -> pl.DataFrame:
    """``by_score`` with ``rank`` (1-based per note and system)."""
    return by_score(frame).with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(NOTE_ID, SYSTEM).alias(RANK))


def rank_and_cut(candidates: pl.DataFrame, *, top_k: int, threshold_only: bool,
                 describe: Callable[[str, str], str]) -> pl.DataFrame:
    """The output rows: ``above_threshold`` (score at or above the candidate's ``threshold``),
    only those with ``threshold_only``, ranked, the best ``top_k`` per note and system, with
    ``describe(code, system)`` as description."""
    frame = candidates.with_columns((pl.col(SCORE) >= pl.col(THRESHOLD)).fill_null(False).alias(ABOVE_THRESHOLD))
    if threshold_only:
        frame = frame.filter(pl.col(ABOVE_THRESHOLD))
    frame = ranked(frame).filter(pl.col(RANK) <= top_k)
    pairs = frame.select(SYSTEM, CODE).unique()
    descriptions = pairs.with_columns(
        pl.Series(DESCRIPTION, [describe(code, system) for system, code in pairs.iter_rows()], dtype=pl.String))
    return (frame.join(descriptions, on=[SYSTEM, CODE], how="left", maintain_order="left")
            .select(PREDICTION_SCHEMA.names()).cast(dict(PREDICTION_SCHEMA)))
