from __future__ import annotations


import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from coder.errors import ModelBundleError, NotFittedError, UsageError
from coder.rank import ranked
from coder.rerank.reranker import Reranker, f1_thresholds
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
    assert not [f for f in tmp_path.iterdir() if f.suffix not in (".json", ".onnx")]  # no pickle
    assert_frame_equal(Reranker.load(tmp_path).predict(test), scored)


def test_onnx_trees_score_as_scikit_learn_does():
    from sklearn.ensemble import HistGradientBoostingClassifier

    from coder.rerank.trees import tree_probability, trees_session, trees_to_onnx

    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 4))
    x[rng.random(x.shape) < 0.05] = np.nan  # missing values follow each split's learned side
    y = (x[:, 0] + rng.normal(scale=0.5, size=500) > 0).astype(int)
    fitted = HistGradientBoostingClassifier(max_iter=40, max_leaf_nodes=7).fit(x, y)
    session = trees_session(trees_to_onnx(fitted, n_features=4).SerializeToString(), n_features=4)
    test = rng.normal(size=(300, 4))
    test[::7, 1] = np.nan
    assert np.abs(tree_probability(session, test) - fitted.predict_proba(test)[:, 1]).max() < 1e-12


def test_thresholds_are_chosen_on_notes_the_scoring_model_did_not_see():
    reranker = Reranker(model="logistic").fit(_frame(), gold=_frame().filter(pl.col("label") == 1).select("note_id", "code", "system"))
    assert set(reranker.thresholds_) == {CM, PCS} and all(0 < t < 1 for t in reranker.thresholds_.values())


@pytest.mark.parametrize("model", ["hgb", "logistic"], ids=["trees", "logistic"])
def test_extra_rows_lacking_a_feature_are_learned_from_but_never_cut_on(model):
    """Out-of-fold training candidates have no PLM-ICD score: missing there, learned from all the same."""
    frame = _frame(n_notes=10, seed=0).with_columns(pl.col("lexicon").alias("plm_icd"))
    extra = _frame(n_notes=40, seed=2).with_columns(pl.col("note_id") + "x")  # no plm_icd column
    gold = frame.filter(pl.col("label") == 1).select("note_id", "code", "system")
    reranker = Reranker(model=model, max_iter=30).fit(frame, gold=gold, extra_rows=extra)
    assert reranker.features_ == ["lexicon", "tfidf", "plm_icd"]
    scored = reranker.predict(_frame(seed=1).with_columns(pl.col("lexicon").alias("plm_icd")))
    assert scored["score"].is_finite().all() and np.corrcoef(scored["score"], scored["lexicon"])[0, 1] > 0.8
    alone = Reranker(model=model, max_iter=30).fit(frame, gold=gold)
    assert not np.allclose(scored["score"], alone.predict(scored.drop("score"))["score"])  # the extra rows count
    assert set(reranker.thresholds_) == {CM, PCS}  # cuts on frame's notes only: gold lacks extra's notes


def test_tampered_tree_file_is_refused(tmp_path):
    Reranker(max_iter=5).fit(_frame()).save(tmp_path)
    (tmp_path / "icd_10_cm.onnx").write_bytes(b"not the model")
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


SCORED = pl.DataFrame({"note_id": ["a", "a", "a"], "system": [CM, CM, CM], "code": ["R51", "R10.9", "R10"],
                       "score": [0.5, 0.6, 0.8]})


def test_ranked_and_thresholds():
    frame = ranked(SCORED.with_columns(pl.Series("label", [1, 0, 1])))
    assert frame["code"].to_list() == ["R10", "R10.9", "R51"] and frame["rank"].to_list() == [1, 2, 3]
    gold = pl.DataFrame({"note_id": ["a", "a", "a"], "code": ["R10", "R51", "Z99"], "system": [CM, CM, CM]})
    # keeping all three: TP 2 of 3 predicted and 3 gold (F1 0.667) beats the top one alone (0.5)
    assert f1_thresholds(frame, gold=gold) == {CM: 0.5}
