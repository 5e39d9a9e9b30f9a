"""Fold the model's votes into the candidate scores: a pure function the pipeline calls."""

from __future__ import annotations

import polars as pl

from coder.schema import CODE, NOTE_ID, PREDICTION_SCHEMA, SYSTEM

LLM_SOURCE = "llm"
VOTES = "votes"
SHARE = "share"
DESCRIPTION = "description"
VOTES_SCHEMA = pl.Schema(
    {
        NOTE_ID: pl.String,
        SYSTEM: pl.String,
        CODE: pl.String,
        DESCRIPTION: pl.String,
        VOTES: pl.Int32,  # prompts (chunks) of the note whose answer contained the code
        SHARE: pl.Float64,  # votes / prompts of the note, in (0, 1]
    }
)


def merge_llm_votes(predictions: pl.DataFrame, votes: pl.DataFrame, *, weight: float) -> pl.DataFrame:
    """Raise voted codes' scores and re-rank; ``predictions`` and the result follow ``PREDICTION_SCHEMA``.

    A voted row's score becomes ``score + weight * share * (1 - score)``: it stays in [0, 1], moves
    toward 1 in proportion to the share of the note's prompts that proposed the code, and ``weight=0``
    changes nothing. ``source`` gets ``+llm``. A voted code that was not a candidate (a parent, child or
    sibling) is added with score ``weight * share`` and source ``llm``. ``above_threshold`` is left as
    it was (False for added rows): the votes re-rank, the pipeline's thresholds decide.
    Ranks are renumbered 1..n per (note, system) by score, ties kept in their previous order.
    """
    if votes.is_empty() or weight == 0.0:
        return predictions
    keys = [NOTE_ID, SYSTEM, CODE]
    voted = votes.select(*keys, DESCRIPTION, SHARE)
    # Row numbers keep the notes (and systems) in the order the pipeline gave them.
    merged = predictions.with_row_index("_row").join(voted, on=keys, how="full", coalesce=True, suffix="_llm")
    hit = pl.col(SHARE).is_not_null()
    added = pl.col("score").is_null()
    score = pl.col("score").fill_null(0.0)
    merged = merged.with_columns(
        pl.when(hit).then(score + weight * pl.col(SHARE) * (1.0 - score)).otherwise(score).alias("score"),
        pl.when(added)
        .then(pl.lit(LLM_SOURCE))
        .when(hit & ~pl.col("source").str.split("+").list.contains(LLM_SOURCE))
        .then(pl.col("source") + "+" + LLM_SOURCE)
        .otherwise(pl.col("source"))
        .alias("source"),
        pl.col(DESCRIPTION).fill_null(pl.col(f"{DESCRIPTION}_llm")),
        pl.col("above_threshold").fill_null(False),
        pl.col("rank").fill_null(pl.col("rank").max() + 1).fill_null(1),
    )
    merged = merged.with_columns(
        pl.col("_row").min().over(NOTE_ID).alias("_note_row"), pl.col("_row").min().over(NOTE_ID, SYSTEM)
    ).sort(
        ["_note_row", "_row", "score", "rank"],
        descending=[False, False, True, False],
        nulls_last=True,
        maintain_order=True,
    )
    merged = merged.with_columns(pl.int_range(1, pl.len() + 1).over(NOTE_ID, SYSTEM).cast(pl.Int32).alias("rank"))
    return merged.select(PREDICTION_SCHEMA.names()).cast(dict(PREDICTION_SCHEMA))
