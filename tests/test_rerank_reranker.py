from __future__ import annotations


import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from coder.errors import ModelBundleError, NotFittedError, UsageError
from coder.rerank.reranker import Reranker, best_gates, f1_thresholds, gate_notes, ranked, resolve_hierarchy
from coder.schema import CM, PCS


def _frame(n_notes: int = 40, seed: int = 0) -> pl.DataFrame:
    """Candidates whose label follows the ``lexicon`` score (noisily): a learnable toy task."""
    rng = np.random.default_rng(seed)
    rows = []
    for note in range(n_notes):
        for system in (CM, PCS):
            for k in range(6):
                lexicon = rng.random()
                rows.append((f"n{note}", system, f"C{k}", lexicon, float(rng.random()), int(rng.random() < lexicon)))
    return pl.DataFrame(rows, schema=["note_id", "system", "code", "lexicon", "tfidf", "label"], orient="row").with_columns(
        pl.lit(0, dtype=pl.Int32).alias("evidence_start"), pl.lit(5, dtype=pl.Int32).alias("evidence_end"))


@pytest.mark.parametrize("model", ["hgb", "logistic"], ids=["trees", "logistic"])
def test_learns_the_informative_feature_and_round_trips(model, tmp_path):
    train, test = _frame(seed=0), _frame(seed=1)
    reranker = Reranker(model=model, max_iter=30).fit(train)
    assert reranker.features_ == ["lexicon", "tfidf"]
    scored = reranker.predict(test)
    assert scored["score"].is_between(0, 1).all()
    assert np.corrcoef(scored["score"], scored["lexicon"])[0, 1] > 0.8
    reranker.save(tmp_path)
    assert_frame_equal(Reranker.load(tmp_path).predict(test), scored)


def test_tampered_tree_file_is_refused(tmp_path):
    Reranker(max_iter=5).fit(_frame()).save(tmp_path)
    (tmp_path / "icd_10_cm.joblib").write_bytes(b"not the model")
    with pytest.raises(ModelBundleError, match="sha256"):
        Reranker.load(tmp_path)


def test_errors():
    with pytest.raises(NotFittedError, match="not fitted"):
        Reranker().predict(_frame())
    with pytest.raises(UsageError, match="model must be one of"):
        Reranker(model="forest").fit(_frame())
    reranker = Reranker(model="logistic").fit(_frame())
    with pytest.raises(UsageError, match=r"lacks reranker features \['tfidf'\]"):
        reranker.predict(_frame().drop("tfidf"))
    with pytest.raises(ModelBundleError, match="reranker.json"):
        Reranker.load(__import__("pathlib").Path("/nonexistent"))


HIERARCHY = pl.DataFrame({
    "note_id": ["a", "a", "a"], "system": [CM, CM, CM], "code": ["R10", "R10.9", "R51"],
    "evidence_start": [0, 2, 0], "evidence_end": [5, 6, 5], "score": [0.8, 0.6, 0.5],
})


@pytest.mark.parametrize(("penalty", "expected"), [(1.0, [0.8, 0.6, 0.5]), (0.5, [0.4, 0.6, 0.5])], ids=["off", "half"])
def test_resolve_hierarchy_demotes_parent_with_overlapping_child(penalty, expected):
    assert resolve_hierarchy(HIERARCHY, penalty=penalty)["score"].to_list() == pytest.approx(expected)


def test_ranked_and_thresholds():
    frame = ranked(HIERARCHY.with_columns(pl.Series("label", [1, 0, 1])))
    assert frame["rank"].to_list() == [1, 2, 3]
    gold = pl.DataFrame({"note_id": ["a", "a", "a"], "code": ["R10", "R51", "Z99"], "system": [CM, CM, CM]})
    # keeping all three: TP 2 of 3 predicted and 3 gold (F1 0.667) beats the top one alone (0.5)
    assert f1_thresholds(frame, gold=gold) == {CM: 0.5}


def test_gates_drop_notes_without_a_likely_code_and_are_chosen_by_map():
    scored = pl.DataFrame({
        "note_id": ["a", "a", "b"], "system": [PCS, PCS, PCS], "code": ["0DTJ", "0DT6", "0DTJ"],
        "score": [0.6, 0.1, 0.04], "label": [1, 0, 0],
    })
    assert gate_notes(scored, gates={PCS: 0.05})["note_id"].to_list() == ["a", "a"]
    assert gate_notes(scored, gates={CM: 0.9}).height == 3  # other systems' gates do not apply
    gold = pl.DataFrame({"note_id": ["a"], "code": ["0DTJ"], "system": [PCS]})
    # b has no gold procedure: ranking it costs an AP of 0, so the best gate leaves it out
    assert best_gates(scored, gold=gold, grid=(0.0, 0.05, 0.5)) == {PCS: 0.05}


def test_gates_never_pay_for_dropping_a_note_that_has_gold_codes():
    scored = pl.DataFrame({
        "note_id": ["a", "b", "c"], "system": [PCS, PCS, PCS], "code": ["0DTJ", "0DTJ", "0DT6"],
        "score": [0.6, 0.04, 0.03], "label": [1, 0, 1],
    })
    gold = pl.DataFrame({"note_id": ["a", "c"], "code": ["0DTJ", "0DT6"], "system": [PCS, PCS]})
    # gating at 0.05 would drop b (no gold, good) and c (gold, counted AP 0): keep everything
    assert best_gates(scored, gold=gold, grid=(0.0, 0.05)) == {PCS: 0.0}
