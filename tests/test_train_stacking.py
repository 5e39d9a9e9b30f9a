"""Out-of-fold stacking: sources fitted without seeing the notes they score, rerankers over them."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from coder.candidates.lexicon import EvidenceLexicon
from coder.candidates.ontology_search import OntologySearch
from coder.candidates.tfidf import TfidfClassifier
from coder.model.scorer import Scored
from coder.rerank.reranker import Reranker, fold_ids
from coder.candidates.stack import CandidateStack
from coder.schema import PLM_ICD
from coder.train.stacking import (
    add_plm_rerankers, cross_fit, dev_frames, fit_stacking, labelled_frame, refit_dev_frames, train_folds, without_plm,
)


@pytest.fixture(scope="module")
def sources():
    return [EvidenceLexicon(), OntologySearch(top_k=3), TfidfClassifier(min_df=1, top_k=3)]


def test_fold_ids_are_balanced_and_seeded():
    ids = pl.Series(["a", "b", "c", "d", "e"])
    folds = fold_ids(ids, folds=2, seed=3)
    assert sorted(np.bincount(folds)) == [2, 3]
    assert (fold_ids(ids, folds=2, seed=3) == folds).all()


def _frame(tiny_corpus, tiny_ontology, sources):
    stack = CandidateStack(tuple(sources)).fit(tiny_corpus, ontology=tiny_ontology)
    known = stack.fitted_once().candidates(tiny_corpus.notes)  # the search, found once
    parts = train_folds(stack, tiny_corpus, ontology=tiny_ontology, known=known, folds=3)
    return labelled_frame(stack, parts, codes=tiny_corpus.codes)


def test_out_of_fold_frame_never_scores_a_note_with_its_own_evidence(tiny_corpus, tiny_ontology, sources):
    frame = _frame(tiny_corpus, tiny_ontology, sources)
    # n6 is the only note with "apendicectomía abierta": out of fold, no lexicon candidate for it
    n6 = frame.filter((pl.col("note_id") == "n6") & (pl.col("code") == "0DTJ0ZZ"))
    assert n6.is_empty() or n6["lexicon"].item() == 0
    assert set(frame["note_id"]) <= set(tiny_corpus.notes["note_id"]) and "label" in frame.columns
    assert {"lexicon", "ontology", "tfidf"} <= set(frame.columns)
    # the search scored the other sources' candidates of each held-out fold
    assert "ontology_all" in frame.columns and (frame.filter(pl.col("ontology_rank") == 100)["ontology_all"] > 0).any()


def test_cross_fit_scores_every_row_once(tiny_corpus, tiny_ontology, sources):
    frame = _frame(tiny_corpus, tiny_ontology, sources)
    scored = cross_fit(frame, reranker=Reranker(model="logistic"), folds=2)
    assert scored.height == frame.height and scored["score"].is_between(0, 1).all()


def test_fit_stacking_fits_a_reranker_per_column_set_with_thresholds(tiny_corpus, tiny_ontology, sources):
    stacking = fit_stacking(train=tiny_corpus, ontology=tiny_ontology, sources=sources, folds=2, reranker=Reranker(model="logistic"))
    assert list(stacking.candidates.names) == ["lexicon", "ontology", "tfidf"]
    assert set(stacking.rerankers) == {("lexicon", "ontology", "tfidf"), ("ontology", "tfidf")}
    assert all(r.thresholds_ for r in stacking.rerankers.values())


def test_sources_the_corpus_cannot_fit_are_left_out(tiny_corpus, tiny_ontology, sources):
    english = tiny_corpus.text_only("text")  # no text_es: no lexicon
    stacking = fit_stacking(train=english, ontology=tiny_ontology, sources=sources, folds=2, reranker=Reranker(model="logistic"),
                      degraded_column=None)
    assert list(stacking.candidates.names) == ["ontology", "tfidf"] and set(stacking.rerankers) == {("ontology", "tfidf")}


def _plm(corpus):
    """PLM-ICD's scores of ``corpus``'s notes: I10 proposed at 0.9, J45.909 a label below its top (0.2)."""
    ids = corpus.notes["note_id"]
    return Scored(pl.DataFrame({"note_id": ids, "system": "ICD-10-CM", "code": "I10", PLM_ICD: 0.9}), (), (),
                  scores=np.tile([0.9, 0.2], (ids.len(), 1)), note_ids=tuple(ids),
                  labels=pl.DataFrame({"system": ["ICD-10-CM"] * 2, "code": ["I10", "J45.909"], "column": [0, 1]}))


def test_plm_icd_rerankers_are_fitted_on_dev(tiny_corpus, tiny_ontology, sources):
    stacking = fit_stacking(train=tiny_corpus, ontology=tiny_ontology, sources=sources, folds=2, reranker=Reranker(model="logistic"))
    frames = dev_frames(stacking, dev=tiny_corpus, plm=_plm(tiny_corpus))
    # PLM-ICD's candidates too are backfilled, as in the pipeline, and PLM-ICD backfills the others'
    frame = frames[("ontology", "tfidf", PLM_ICD)]
    backfilled = frame.filter(pl.col("code") == "I10")["ontology_all"]
    assert backfilled.len() == tiny_corpus.notes.height and (backfilled > 0).sum() >= 4
    asthma = frame.filter(pl.col("code") == "J45.909")
    assert asthma.height and (asthma[f"{PLM_ICD}_all"] == 0.2).all() and (asthma[PLM_ICD] == 0).all()
    with_plm = add_plm_rerankers(stacking, frames=frames, gold=tiny_corpus.codes, reranker=Reranker(model="logistic"))
    assert ("lexicon", "ontology", "tfidf", PLM_ICD) in with_plm.rerankers
    assert ("ontology", "tfidf", PLM_ICD) in with_plm.rerankers
    # they also learn from the out-of-fold train frame of the same sources, where PLM-ICD is missing
    assert set(stacking.out_of_fold) == set(stacking.rerankers)
    extra = without_plm(stacking, ("ontology", "tfidf", PLM_ICD))
    assert extra is stacking.out_of_fold[("ontology", "tfidf")] and PLM_ICD not in extra.columns
    scored = cross_fit(frames[("ontology", "tfidf", PLM_ICD)], reranker=Reranker(model="logistic"), folds=2, extra_rows=extra)
    assert scored.height == frames[("ontology", "tfidf", PLM_ICD)].height and scored["score"].is_finite().all()


def test_refit_learns_from_the_added_notes_and_keeps_the_ontology_sources(tiny_corpus, tiny_ontology, sources):
    ids = tiny_corpus.notes["note_id"]
    fitted = CandidateStack(tuple(sources)).fit(tiny_corpus.subset(ids.filter(ids != "n6")), ontology=tiny_ontology).sources
    n6 = tiny_corpus.notes.filter(pl.col("note_id") == "n6")
    assert "0DTJ0ZZ" not in fitted[0].candidates(n6)["code"].to_list()  # its phrase is n6's alone
    refitted = CandidateStack(fitted).refit(tiny_corpus, ontology=tiny_ontology).sources
    assert "0DTJ0ZZ" in refitted[0].candidates(n6)["code"].to_list()
    assert refitted[1] is fitted[1] and refitted[2] is not fitted[2]  # the ontology search learns from no note


def test_each_dev_fold_is_scored_by_sources_fitted_on_train_and_the_other_folds(tiny_corpus, tiny_ontology, sources):
    ids = tiny_corpus.notes["note_id"]
    train, dev = (tiny_corpus.subset(ids.filter(ids.is_in(part))) for part in (["n2", "n3", "n6"], ["n1", "n4", "n5"]))
    stacking = fit_stacking(train=train, ontology=tiny_ontology, sources=sources, folds=2, reranker=Reranker(model="logistic"))
    plm = _plm(dev)
    frames, held_out = dev_frames(stacking, dev=dev, plm=plm), refit_dev_frames(stacking, train=train, dev=dev, plm=plm, ontology=tiny_ontology)
    assert set(held_out) == set(frames)
    full = ("lexicon", "ontology", "tfidf", PLM_ICD)
    assert sorted(held_out[full]["note_id"].unique()) == ["n1", "n4", "n5"]

    def lexicon_codes(frame, note):
        return frame.filter((pl.col("note_id") == note) & (pl.col("lexicon_rank") < 100))["code"].to_list()
    # n4 reads "diabetes mellitus tipo 2", a phrase of dev note n1 only: found once n1's fold is learnt from
    assert "E11.9" not in lexicon_codes(frames[full], "n4") and "E11.9" in lexicon_codes(held_out[full], "n4")
    assert "E11.9" not in lexicon_codes(held_out[full], "n1")  # never from the scored note's own spans
    scored = cross_fit(frames[full], reranker=Reranker(model="logistic"), folds=2, held_out=held_out[full],
                       extra_rows=without_plm(stacking, full))
    assert scored.height == held_out[full].height and scored["score"].is_finite().all()
