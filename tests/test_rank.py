"""coder.rank: one tie rule (descending score, equal scores by code) for the sources' ranks and the output's."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from coder.rank import by_score, ranked, score_rank, within_top
from coder.schema import CM, PCS

FRAME = pl.DataFrame({
    "note_id": ["a"] * 5 + ["b"] * 2,
    "system": [CM, CM, CM, CM, PCS, CM, CM],
    "code": ["C", "B", "A", "D", "0DTJ", "Z", "Y"],
    "score": [0.5, 0.9, 0.5, 0.5, 0.5, 0.1, 0.1],
})
RANKS = {("a", "B"): 1, ("a", "A"): 2, ("a", "C"): 3, ("a", "D"): 4, ("a", "0DTJ"): 1, ("b", "Y"): 1, ("b", "Z"): 2}


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["order-0", "order-1", "order-2"])
def test_equal_scores_rank_by_code_whatever_the_row_order(seed):
    frame = FRAME.sample(fraction=1.0, shuffle=True, seed=seed).with_columns(score_rank("score").alias("r"))
    assert {(note, code): r for note, code, r in frame.select("note_id", "code", "r").iter_rows()} == RANKS
    assert frame.schema["r"] == pl.Int32
    assert by_score(frame)["r"].to_list() == ranked(frame)["rank"].to_list()  # the output's order


def test_a_null_score_has_no_rank_and_takes_none():
    frame = FRAME.with_columns(pl.when(pl.col("code") == "A").then(None).otherwise(pl.col("score")).alias("score"))
    ranks = dict(frame.filter(pl.col("note_id") == "a").select("code", score_rank("score")).iter_rows())
    assert ranks == {"C": 2, "B": 1, "A": None, "D": 3, "0DTJ": 1}


@pytest.mark.parametrize(("k", "kept"), [(1, [1, 0, 0, 0]), (2, [1, 1, 1, 0]), (3, [1, 1, 1, 0]), (9, [1, 1, 1, 1])],
                         ids=["best", "tie-at-the-cut", "tie-inside", "k-above-n"])
def test_within_top_keeps_the_ties_at_the_cut(k, kept):
    scores = np.array([[0.9, 0.5, 0.5, 0.1], [0.1, 0.5, 0.5, 0.9]])
    assert within_top(scores, k).tolist() == [[bool(x) for x in kept], [bool(x) for x in kept[::-1]]]
