from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from coder.candidates.ontology_search import OntologySearch, ontology_terms
from coder.rerank.reranker import Reranker
from coder.train.stacking import (
    Corpus, Stack, add_dev_reranker, cross_fit, fit_stack, fold_ids, out_of_fold, predictor_source,
)


@pytest.fixture(scope="module")
def corpus(tiny_codiesp) -> Corpus:
    return Corpus(*tiny_codiesp)


@pytest.fixture(scope="module")
def search(tiny_ontology) -> OntologySearch:
    return OntologySearch(top_k=3).fit(ontology_terms(tiny_ontology))


def test_fold_ids_are_balanced_and_seeded():
    ids = pl.Series(["a", "b", "c", "d", "e"])
    folds = fold_ids(ids, folds=2, seed=3)
    assert sorted(np.bincount(folds)) == [2, 3]
    assert (fold_ids(ids, folds=2, seed=3) == folds).all()


def test_out_of_fold_frame_never_scores_a_note_with_its_own_evidence(corpus, search):
    frame = out_of_fold(corpus, search=search, search_candidates=None, folds=3)
    # n6 is the only note with "apendicectomía abierta": out of fold, no lexicon candidate for it
    n6 = frame.filter((pl.col("note_id") == "n6") & (pl.col("code") == "0DTJ0ZZ"))
    assert n6.is_empty() or n6["lexicon"].item() == 0
    assert set(frame["note_id"]) <= set(corpus.notes["note_id"]) and "label" in frame.columns


def test_cross_fit_scores_every_row_once(corpus, search):
    frame = out_of_fold(corpus, search=search, search_candidates=None, folds=3)
    scored = cross_fit(frame, reranker=Reranker(model="logistic"), folds=2)
    assert scored.height == frame.height and scored["score"].is_between(0, 1).all()


def test_fit_stack_saves_both_modes_and_reloads(corpus, search, tmp_path):
    stack = fit_stack(train=corpus, search=search, out_dir=tmp_path, folds=2, reranker=Reranker(model="logistic"))
    assert set(stack.rerankers) == {("lexicon", "ontology", "tfidf"), ("ontology", "tfidf")}
    loaded = Stack.load(tmp_path)
    for notes in (corpus.notes, corpus.notes.select("note_id", "text")):
        assert_frame_equal(loaded.score(notes), stack.score(notes))
    with pytest.raises(KeyError, match="no reranker for sources"):
        stack.score(corpus.notes.select("note_id", "text_es"))


class _FakePredictor:
    """Predictor stand-in: scores I10 high for every note."""

    def predict(self, notes: pl.DataFrame, *, top_k: int):
        frame = pl.DataFrame({"note_id": notes["note_id"], "system": "ICD-10-CM", "code": "I10", "score": 0.9, "rank": 1})
        return __import__("types").SimpleNamespace(predictions=frame)


def test_dev_reranker_with_plm_icd_scores(corpus, search, tmp_path):
    stack = fit_stack(train=corpus, search=search, folds=2, reranker=Reranker(model="logistic"))
    plm = predictor_source(_FakePredictor())(corpus.notes)
    assert plm.columns == ["note_id", "system", "code", "plm_icd"]
    with_plm = add_dev_reranker(stack, dev=corpus, extra={"plm_icd": plm}, reranker=Reranker(model="logistic"), out_dir=tmp_path)
    assert ("lexicon", "ontology", "tfidf", "plm_icd") in with_plm.rerankers
    assert ("ontology", "tfidf", "plm_icd") in with_plm.rerankers
    scored = Stack.load(tmp_path).score(corpus.notes, extra={"plm_icd": plm})
    assert "plm_icd" in scored.columns and scored["score"].is_between(0, 1).all()


def test_predictions_have_the_output_schema(corpus, search):
    from coder.schema import PREDICTION_SCHEMA

    stack = fit_stack(train=corpus, search=search, folds=2, reranker=Reranker(model="logistic"))
    rows = stack.predictions(corpus.notes, describe=lambda code, system: f"{system}:{code}", top_k=2)
    assert rows.schema == PREDICTION_SCHEMA
    assert rows["rank"].max() <= 2 and rows["score"].is_between(0, 1).all()
    first = rows.filter((pl.col("note_id") == "n1") & (pl.col("code") == "I10")).row(0, named=True)
    assert first["description"] == "ICD-10-CM:I10" and "lexicon" in first["source"].split("+")
    assert first["evidence_text"] == "hipertensión arterial"
    gated = stack.predictions(corpus.notes, describe=lambda code, system: "", top_k=2, gate=True)
    assert gated.height <= rows.height
