"""Dense search with the tiny random encoder: exact-text matches, brute-force equality, evidence,
the cache (encoder ONNX and term vectors built once) and the encoder check on load."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import coder.candidates.dense_search as dense_search
from coder.candidates.dense_search import DenseSearch
from coder.candidates.ontology_search import TERMS_SCHEMA
from coder.errors import ModelBundleError, NotFittedError
from coder.schema import CM, PCS

TERMS = pl.DataFrame(
    [
        (CM, "I10", "Essential (primary) hypertension"),
        (CM, "E11.9", "Type 2 diabetes mellitus without complications"),
        (CM, "I10", "High blood pressure"),  # a second term, apart from the first
        (CM, "J45.909", "Unspecified asthma, uncomplicated"),
        (PCS, "0DTJ", "Resection of Appendix"),
        (PCS, "0DTJ0ZZ", "Resection of Appendix, Open Approach"),
    ],
    schema=TERMS_SCHEMA,
    orient="row",
)
NOTES = pl.DataFrame({
    "note_id": ["a", "b", "c", "d"],
    "text": ["Seen today. Unspecified asthma, uncomplicated; High blood pressure.\nResection of Appendix. Then home.",
             "", "Type 2 diabetes mellitus. No asthma. Diabetes without complications", None],
})


@pytest.fixture
def cache(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CODER_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def encoder(tiny_model_path):
    return str(tiny_model_path.parent / "encoder")


@pytest.fixture
def search(cache, encoder) -> DenseSearch:
    return DenseSearch(top_k=2, encoder=encoder).index(TERMS)


def test_a_sentence_equal_to_a_term_finds_its_code_first_with_that_sentence_as_evidence(search):
    found = search.candidates(NOTES)
    text = NOTES["text"][0]
    a = found.filter(pl.col("note_id") == "a")
    assert a.filter(pl.col("system") == CM)["code"].sort().to_list() == ["I10", "J45.909"]  # the two exact sentences
    for code, sentence in (("J45.909", "Unspecified asthma, uncomplicated"), ("I10", "High blood pressure"),
                           ("0DTJ", "Resection of Appendix")):
        row = a.filter(pl.col("code") == code).row(0, named=True)
        assert row["dense"] == pytest.approx(1.0, abs=1e-3) and row["dense_rank"] <= 2  # fp16 term vectors
        assert text[row["evidence_start"] : row["evidence_end"]].strip() == sentence == row["evidence_text"].strip()
    assert set(found["note_id"]) == {"a", "c"}  # notes without sentences give no rows
    assert found.group_by("note_id", "system").len()["len"].max() == 2  # top_k


def test_scores_are_the_best_cosine_over_terms_and_sentences(search, monkeypatch):
    notes = NOTES.filter(pl.col("note_id").is_in(["a", "c"]))
    sentences = {note: [text[a:b] for a, b in dense_search.sentence_spans(text).tolist()] for note, text in notes.iter_rows()}
    terms = search._encode(search.terms_["term"].to_list(), max_length=dense_search.TERM_TOKENS).astype(np.float16)
    for note, texts in sentences.items():
        best = (search._encode(texts, max_length=dense_search.SENTENCE_TOKENS) @ terms.T).max(axis=0)
        per_code = search.terms_.with_columns(pl.Series("best", best)).group_by("system", "code").agg(pl.col("best").max())
        found = search.candidates(notes).filter(pl.col("note_id") == note).join(per_code, on=["system", "code"])
        np.testing.assert_allclose(found["dense"], found["best"], atol=1e-5)
    whole = search.candidates(notes)
    # blocks of one sentence and chunks of one term: each note alone, a sentence and a code at a time; the same rows
    monkeypatch.setattr(dense_search, "SENTENCE_BLOCK", 1)
    search.chunks_ = dense_search._term_chunks(search.code_starts_, search.terms_.height, 1)
    assert search.chunks_ == list(range(search.codes_.height + 1))  # I10's two terms: one chunk
    assert_frame_equal(search.candidates(notes), whole)


def test_save_load_round_trip_reads_the_cache_and_checks_the_encoder(search, encoder, tmp_path, monkeypatch, caplog):
    search.save(tmp_path / "dense")
    assert sorted(p.name for p in (tmp_path / "dense").iterdir()) == ["dense.json", "terms.parquet"]

    def no_export(*args, **kwargs):
        raise AssertionError("the cached encoder file should be used")

    monkeypatch.setattr("coder.export.sentence.export_sentence_encoder", no_export)
    with caplog.at_level(logging.INFO, logger="coder.candidates.dense_search"):
        loaded = DenseSearch.load(tmp_path / "dense")
    assert "term vectors from" in caplog.text
    assert_frame_equal(loaded.candidates(NOTES), search.candidates(NOTES))

    changed = tmp_path / "encoder"
    shutil.copytree(encoder, changed)
    (changed / "config.json").write_text((changed / "config.json").read_text() + "\n")
    state = (tmp_path / "dense" / "dense.json")
    state.write_text(state.read_text().replace(encoder, str(changed)))
    with pytest.raises(ModelBundleError, match="was built with"):
        DenseSearch.load(tmp_path / "dense")


def test_unfitted_missing_folder_and_missing_encoder(cache, tmp_path):
    with pytest.raises(NotFittedError, match="not fitted"):
        DenseSearch().candidates(NOTES)
    with pytest.raises(ModelBundleError, match="dense.json"):
        DenseSearch.load(tmp_path)
    with pytest.raises(ModelBundleError, match="encoder folder .* not found"):
        DenseSearch(encoder=str(tmp_path / "nowhere")).index(TERMS)


def test_fit_reads_the_ontology_and_no_notes(cache, encoder, tiny_ontology):
    search = DenseSearch(encoder=encoder).fit(ontology=tiny_ontology)
    assert (CM, "I10") in set(search.codes_.iter_rows()) and search.vectors_.shape[0] == search.terms_.height
    np.testing.assert_allclose(np.linalg.norm(search.vectors_, axis=1), 1.0, atol=1e-2)  # fp16 unit vectors
