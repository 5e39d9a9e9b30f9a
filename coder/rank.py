"""Rank, threshold and top-k, done once: scored candidates in, PREDICTION_SCHEMA rows out."""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from coder.schema import ABOVE_THRESHOLD, CODE, DESCRIPTION, NOTE_ID, PREDICTION_SCHEMA, RANK, SCORE, SYSTEM, THRESHOLD


def score_rank(column: str) -> pl.Expr:
    """The rank (1 = best, Int32) of ``column`` in its note and system, descending; ties in row order."""
    return pl.col(column).rank("ordinal", descending=True).over(NOTE_ID, SYSTEM).cast(pl.Int32)


def by_score(frame: pl.DataFrame, score: str = SCORE) -> pl.DataFrame:
    """``frame`` by note, system and descending ``score``, equal scores by code: the order of the output's
    ranks and of every ranking a metric reads (a sort that leaves ties unordered could move a figure)."""
    return frame.sort([NOTE_ID, SYSTEM, score, CODE], descending=[False, False, True, False])


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
