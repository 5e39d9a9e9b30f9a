"""coder.metrics on hand-made rankings: every value computed by hand in the comments."""

import numpy as np
import polars as pl
import pytest

from coder.metrics import (
    average_precision, best_f1_cut, clean_ranking, f1, gold_sets, matrix_scores, mean_average_precision, prf, rankings,
    ranking_scores,
)
from coder.schema import CM, PCS


def test_map_matches_the_official_definition():
    assert clean_ranking(["A", "a", "B", "X", "C"], is_valid=lambda c: c != "X", limit=2) == ["a", "b"]
    assert average_precision(["a", "x", "b"], {"a", "b", "c"}) == pytest.approx((1 + 2 / 3) / 3)
    # n3 has no valid prediction: left out of the mean, not scored 0.
    assert mean_average_precision({"n1": ["a"], "n3": ["x"]}, {"n1": ["a"], "n3": ["b"]}, is_valid=lambda c: c != "x") == 1.0
    # trectools: a predicted note without gold codes is not a query of the qrels, so it is left out too
    assert mean_average_precision({"n1": ["a", "b"], "n2": ["c"]}, {"n1": ["b"]}) == 0.5


def test_ranking_scores_count_the_notes_they_average_over():
    # n1: A hit at 1, C hit at 3 of gold {A, B, C}: AP (1 + 2/3)/3 = 5/9; n2 gold {D}, no prediction; n3 has no gold
    scores = ranking_scores({"n1": ["A", "X", "C"], "n3": ["Q"]}, {"n1": {"a", "B", "c"}, "n2": {"D"}}, ks=(1, 3))
    assert (scores.map, scores.map_all_notes) == pytest.approx((5 / 9, 5 / 18))
    assert (scores.notes, scores.gold_notes, scores.gold_notes_without_predictions) == (1, 2, 1)
    assert scores.precision_at == pytest.approx({1: 1.0, 3: 2 / 3}) and scores.recall_at == pytest.approx({1: 1 / 3, 3: 2 / 3})


def test_f1_and_the_best_cut():
    assert prf(1, 2, 3) == pytest.approx({"precision": 1 / 3, "recall": 1 / 4, "f1": 2 / 7})
    assert f1(np.array([0, 2]), np.array([0, 0]), np.array([0, 0])).tolist() == [0.0, 1.0]
    # scores 0.9 (hit), 0.8, 0.7 (hit), 0.1 with 3 gold codes: F1 at each cut 2/4, 2/5, 4/6, 4/7 -> cut 0.7
    assert best_f1_cut(np.array([0.1, 0.9, 0.7, 0.8]), np.array([0, 1, 1, 0]), n_gold=3) == 0.7


def test_frames_to_rankings_and_gold_sets():
    frame = pl.DataFrame({"note_id": ["a", "a", "a"], "system": [CM, CM, PCS], "code": ["I10", "E11.9", "0DT6"],
                          "score": [0.2, 0.9, 0.5]})
    assert rankings(frame, score="score") == {CM: {"a": ["E11.9", "I10"]}, PCS: {"a": ["0DT6"]}}
    assert gold_sets(frame.select("note_id", "code", "system")) == {CM: {"a": {"I10", "E11.9"}}, PCS: {"a": {"0DT6"}}}


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]], ids=["as-given", "reversed", "shuffled"])
def test_equal_scores_rank_by_code_whatever_the_row_order(order):
    frame = pl.DataFrame({"note_id": ["a"] * 4, "system": [CM] * 4, "code": ["I10", "E11.9", "A09", "R51"],
                          "score": [0.5, 0.5, 0.9, 0.5]})[order]
    assert rankings(frame, score="score") == {CM: {"a": ["A09", "E11.9", "I10", "R51"]}}


def test_matrix_scores_rank_every_label_of_a_system():
    labels = [(CM, "A"), (CM, "B"), (PCS, "P")]
    scores = np.array([[0.1, 0.9, 0.5], [0.8, 0.2, 0.4]])
    found = matrix_scores(scores, note_ids=["n1", "n2"], labels=labels, gold={CM: {"n1": {"A"}, "n2": {"A"}}}, ks=(1,))
    # n1 ranks B, A: AP 1/2; n2 ranks A, B: AP 1
    assert found[CM].map == pytest.approx(0.75) and found[CM].precision_at == {1: 0.5} and PCS not in found
