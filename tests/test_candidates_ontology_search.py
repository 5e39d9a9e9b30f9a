from __future__ import annotations

import json
import weakref
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from coder.errors import ModelBundleError, NotFittedError, UsageError
from scipy import sparse

from coder.candidates.ontology_search import (MEASURES, TERMS_SCHEMA, CodeMaxima, OntologySearch, _peak, _sentence_memo,
                                              ontology_terms, sentence_spans, terms_digest)
from coder.schema import CM, PCS

TERMS = pl.DataFrame(
    [
        (CM, "I10", "Essential (primary) hypertension"),
        (CM, "I10", "High blood pressure"),
        (CM, "E11.9", "Type 2 diabetes mellitus without complications"),
        (CM, "J45.909", "Unspecified asthma, uncomplicated"),
        (PCS, "0DTJ", "Resection of Appendix"),
    ],
    schema=TERMS_SCHEMA,
    orient="row",
)


@pytest.fixture(scope="module")
def search() -> OntologySearch:
    return OntologySearch(top_k=2).index(TERMS)


def test_ontology_terms_has_descriptions_inclusion_terms_and_pcs_prefixes(tiny_ontology):
    terms = ontology_terms(tiny_ontology)
    assert (CM, "I10", "High blood pressure") in terms.rows()
    assert (CM, "E11.9", "Type 2 diabetes mellitus without complications") in terms.rows()
    assert (PCS, "0DTJ", "Resection of Appendix") in terms.rows()  # the 4-axis prefix CodiEsp codes with
    assert ontology_terms(tiny_ontology) is terms  # read once per ontology: every fold of coder train asks again


def test_best_sentence_is_the_evidence(search):
    text = "Seen today.\nShe has high blood pressure and takes pills."
    found = search.candidates(pl.DataFrame({"note_id": ["a"], "text": [text]}))
    top = found.filter(pl.col("system") == CM).row(0, named=True)
    assert top["code"] == "I10" and top["ontology_rank"] == 1
    assert text[top["evidence_start"] : top["evidence_end"]] == "She has high blood pressure and takes pills"
    assert found.filter(pl.col("system") == CM).height <= 2


@pytest.mark.parametrize("char_ngrams", [None, (3, 4)], ids=["words-only", "chars-3-4"])
def test_words_and_characters_both_rank_the_described_code_first(char_ngrams):
    search = OntologySearch(char_ngrams=char_ngrams).index(TERMS)
    found = search.candidates(pl.DataFrame({"note_id": ["a"], "text": ["Appendix resection was done."]}))
    assert found.filter(pl.col("system") == PCS)["code"].to_list() == ["0DTJ"]


def test_note_without_sentences_gives_no_rows(search):
    found = search.candidates(pl.DataFrame({"note_id": ["a", "b"], "text": ["", None]}))
    assert found.is_empty() and "ontology" in found.columns


def test_save_load_round_trip(search, tmp_path):
    notes = pl.DataFrame({"note_id": ["a"], "text": ["asthma and type 2 diabetes"]})
    search.save(tmp_path)
    # the model folder stores the terms once for every source; the search records their digest
    assert [path.name for path in tmp_path.iterdir()] == ["search.json"]
    assert json.loads((tmp_path / "search.json").read_text())["terms_sha256"] == terms_digest(search.terms_)
    assert_frame_equal(OntologySearch.load(tmp_path, terms=search.terms_).candidates(notes), search.candidates(notes))


@pytest.mark.parametrize("terms", ["other", "none"], ids=["other-terms", "no-terms"])
def test_loading_without_the_terms_it_was_fitted_on_is_a_model_bundle_error(search, tmp_path, terms):
    search.save(tmp_path)
    with pytest.raises(ModelBundleError, match="not the terms it was fitted on"):
        OntologySearch.load(tmp_path, terms=search.terms_.head(3) if terms == "other" else None)


def test_unfitted_and_missing_folder(tmp_path):
    with pytest.raises(NotFittedError, match="not fitted"):
        OntologySearch().candidates(pl.DataFrame({"note_id": ["a"], "text": ["x"]}))
    with pytest.raises(ModelBundleError, match="search.json"):
        OntologySearch.load(tmp_path, terms=TERMS)


NOTES = pl.DataFrame({
    "note_id": ["a", "b", "c", "d"],
    "text": ["Seen today. Asthma, uncomplicated; high blood pressure.\nAppendix resection was done. Then home.",
             "", "Type 2 diabetes mellitus. No asthma. Diabetes without complications. Blood pressure high.",
             "Essential hypertension"],
})


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("CODER_CACHE_DIR", str(folder))
    return folder


def _refuse_fit(monkeypatch) -> None:
    def refuse(self, terms):
        raise AssertionError("fitted instead of read from the cache")

    monkeypatch.setattr(OntologySearch, "fit", refuse)


def test_cached_index_gives_the_fitted_candidates(search, cache, tmp_path, monkeypatch):
    search.save(tmp_path / "model")
    first = OntologySearch.load(tmp_path / "model", terms=search.terms_)  # fits and writes the index
    assert [f.name.startswith("search-") for f in cache.iterdir()] == [True]
    _refuse_fit(monkeypatch)
    cached = OntologySearch.load(tmp_path / "model", terms=search.terms_)
    expected = search.candidates(NOTES)
    assert not expected.is_empty()
    assert_frame_equal(first.candidates(NOTES), expected, check_exact=True)
    assert_frame_equal(cached.candidates(NOTES), expected, check_exact=True)
    assert (cached.term_matrix_ != search.term_matrix_).nnz == 0


def test_changed_terms_are_refitted_not_read_from_the_cache(cache, tmp_path, monkeypatch):
    first = OntologySearch(top_k=2).index(TERMS)
    first.save(tmp_path / "model")
    OntologySearch.load(tmp_path / "model", terms=first.terms_)
    more = OntologySearch(top_k=2).index(
        pl.concat([TERMS, pl.DataFrame([(CM, "R05", "Cough")], schema=TERMS_SCHEMA, orient="row")]))
    more.save(tmp_path / "model")
    found = OntologySearch.load(tmp_path / "model", terms=more.terms_).candidates(
        pl.DataFrame({"note_id": ["a"], "text": ["a dry cough"]}))
    assert found["code"].to_list() == ["R05"]
    assert len(list(cache.iterdir())) == 2  # one index per terms: models with other terms keep theirs


def test_index_of_older_code_is_replaced(search, cache, tmp_path, monkeypatch):
    search.save(tmp_path / "model")
    OntologySearch.load(tmp_path / "model", terms=search.terms_)
    [old] = cache.iterdir()
    monkeypatch.setattr("coder.candidates.ontology_search.INDEX_VERSION", -1)
    OntologySearch.load(tmp_path / "model", terms=search.terms_)
    [new] = cache.iterdir()
    assert new != old


def test_fits_of_the_same_terms_take_the_index_from_the_process_then_the_cache(tiny_ontology, cache, tmp_path,
                                                                              monkeypatch):
    fitted = OntologySearch(top_k=2).fit(ontology=tiny_ontology)  # fits and writes the index
    [file] = cache.iterdir()

    def refuse(self, terms):
        raise AssertionError("indexed again instead of shared or read from the cache")

    monkeypatch.setattr(OntologySearch, "index", refuse)
    coverage = OntologySearch(top_k=2, measure="coverage").fit(ontology=tiny_ontology)
    assert coverage.term_matrix_ is fitted.term_matrix_  # one index in the process for both measures
    monkeypatch.setattr("coder.candidates.ontology_search._SHARED", weakref.WeakValueDictionary())
    read = OntologySearch(top_k=2).fit(ontology=tiny_ontology)
    assert read.term_matrix_ is not fitted.term_matrix_ and (read.term_matrix_ != fitted.term_matrix_).nnz == 0
    assert_frame_equal(read.candidates(NOTES), fitted.candidates(NOTES), check_exact=True)
    fitted.save(tmp_path / "model")
    loaded = OntologySearch.load(tmp_path / "model", terms=fitted.terms_)
    assert loaded.term_matrix_ is read.term_matrix_  # a model's terms: its fit's key
    assert list(cache.iterdir()) == [file]


@pytest.mark.parametrize("damage", ["garbage", "another key"], ids=["unreadable", "key-mismatch"])
def test_unusable_index_is_refitted_with_a_warning(search, cache, tmp_path, damage, caplog):
    search.save(tmp_path / "model")
    OntologySearch.load(tmp_path / "model", terms=search.terms_)
    [file] = cache.iterdir()
    if damage == "garbage":
        file.write_bytes(b"not an npz")
    else:
        with np.load(file) as arrays:
            saved = dict(arrays)
        saved["header"] = np.frombuffer(json.dumps({"key": "x", "vocabularies": []}).encode(), dtype=np.uint8)
        np.savez(file, **saved)
    loaded = OntologySearch.load(tmp_path / "model", terms=search.terms_)
    assert_frame_equal(loaded.candidates(NOTES), search.candidates(NOTES))
    assert "refitting" in caplog.text


def test_unwritable_cache_only_warns(search, tmp_path, monkeypatch, caplog):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("CODER_CACHE_DIR", str(tmp_path / "file" / "cache"))
    search.save(tmp_path / "model")
    loaded = OntologySearch.load(tmp_path / "model", terms=search.terms_)
    assert_frame_equal(loaded.candidates(NOTES), search.candidates(NOTES))
    assert "cannot write search index" in caplog.text


@pytest.mark.parametrize("top_k", [1, 2, 10])
def test_bounds_blocks_and_groups_do_not_change_candidates(monkeypatch, top_k):
    search = OntologySearch(top_k=top_k).index(TERMS)
    monkeypatch.setattr("coder.candidates.ontology_search.EXACT_FIRST", 10**6)  # every code scored exactly
    expected = search.candidates(NOTES)
    monkeypatch.setattr("coder.candidates.ontology_search.EXACT_FIRST", 1)  # top_k codes, more while bounds allow
    monkeypatch.setattr("coder.candidates.ontology_search.SIMILARITY_BUDGET", 1)  # one term at a time
    monkeypatch.setattr("coder.candidates.ontology_search.TEXT_BUDGET", 10)  # one note per vectorizer call
    assert_frame_equal(search.candidates(NOTES), expected, check_exact=True)
    if top_k == 2:
        evidence = dict(expected.filter(pl.col("note_id") == "a").select("code", "evidence_text").iter_rows())
        assert evidence == {"I10": " high blood pressure", "J45.909": " Asthma, uncomplicated",
                            "0DTJ": "Appendix resection was done"}


def test_scores_are_the_best_cosine_of_any_term_with_any_sentence():
    search = OntologySearch(top_k=10).index(TERMS)
    found = search.candidates(NOTES)
    for note_id, _, _, sentences in search._sentence_vectors(NOTES):
        cosines = (sentences @ search.term_matrix_).toarray().max(axis=0)  # every sentence against every term
        best = {}
        for (system, code), cosine in zip(search.terms_.select("system", "code").iter_rows(), cosines):
            best[system, code] = max(best.get((system, code), 0.0), float(cosine))
        rows = found.filter(pl.col("note_id") == note_id)
        assert {(s, c): v for s, c, v in rows.select("system", "code", "ontology").iter_rows()} == {
            key: value for key, value in best.items() if value > 0}


@pytest.mark.parametrize(("threads", "omp"), [(1, None), (2, None), (5, None), (4, "1")],
                         ids=["one-thread", "two-threads", "more-threads-than-notes", "omp-num-threads-1"])
def test_threads_do_not_change_candidates(search, monkeypatch, threads, omp):
    monkeypatch.setattr("coder.candidates.ontology_search.SEARCH_THREADS", 1)
    expected = search.candidates(NOTES)
    monkeypatch.setattr("coder.candidates.ontology_search.SEARCH_THREADS", threads)
    if omp is not None:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert_frame_equal(search.candidates(NOTES), expected, check_exact=True)



def test_features_in_more_terms_than_max_postings_are_left_out():
    terms = pl.concat([TERMS, pl.DataFrame([(CM, "I15.9", "Secondary hypertension")], schema=TERMS_SCHEMA, orient="row")])
    full = OntologySearch(char_ngrams=None, max_postings=None).index(terms)
    pruned = OntologySearch(char_ngrams=None, max_postings=1).index(terms)
    common = full.vectorizer_.vocabulary_["hypertension"]  # in two terms
    postings = np.diff(full.term_matrix_.indptr)
    assert postings[common] == 2 and np.diff(pruned.term_matrix_.indptr)[common] == 0
    assert (np.delete(np.diff(pruned.term_matrix_.indptr), common) == np.delete(postings, common)).all()


@pytest.mark.parametrize("measure", MEASURES)
def test_equal_scores_rank_and_cut_by_code_whatever_the_ontology_order(measure):
    terms = pl.DataFrame([(CM, "C", "Chronic cough"), (CM, "B", "Chronic cough"), (CM, "A", "Chronic cough"),
                          (CM, "D", "Acute cough")], schema=TERMS_SCHEMA, orient="row")
    notes = pl.DataFrame({"note_id": ["a"], "text": ["Chronic cough."]})
    found = OntologySearch(top_k=2, measure=measure).index(terms).candidates(notes)
    assert found.select("code", "ontology_rank").rows() == [("A", 1), ("B", 2)]


def test_coverage_of_a_term_wholly_in_a_sentence_is_one_whatever_the_sentence_length():
    terms = pl.DataFrame([(CM, "Q75.2", "Hypertelorism"), (CM, "Q17.4", "Misplaced ear, low-set ears"),
                          (CM, "Q30.8", "Other congenital malformations of nose, broad nasal bridge"),
                          (CM, "I10", "Essential (primary) hypertension")], schema=TERMS_SCHEMA, orient="row")
    notes = pl.DataFrame({"note_id": ["short", "long"], "text": [
        "Hypertelorism.",
        "On examination we noted marked hypertelorism, a broad nasal bridge and low-set ears, with hypertension."]})
    cosine = OntologySearch(top_k=4).index(terms).candidates(notes).filter(pl.col("code") == "Q75.2")
    coverage = OntologySearch(name="coverage", top_k=4, measure="coverage").index(terms).candidates(notes)
    assert dict(cosine.select("note_id", "ontology").iter_rows()) == {"short": pytest.approx(1.0), "long": pytest.approx(0.6, abs=0.1)}
    top = coverage.filter(pl.col("coverage_rank") == 1)
    assert top["code"].to_list() == ["Q75.2", "Q75.2"] and top["coverage"].to_list() == pytest.approx([1.0, 1.0])
    assert (coverage["coverage"] <= 1 + 1e-6).all()


def test_coverage_scores_are_the_best_share_of_any_term_in_any_sentence():
    search = OntologySearch(name="coverage", top_k=10, measure="coverage").index(TERMS)
    found = search.candidates(NOTES)
    weights = search.term_matrix_.toarray()  # [n_features, n_terms]
    for note_id, _, _, sentences in search._sentence_vectors(NOTES):
        present = sentences.toarray() > 0  # [n_sentences, n_features]
        shares = (present @ weights / weights.sum(axis=0)).max(axis=0)
        best = {}
        for (system, code), share in zip(search.terms_.select("system", "code").iter_rows(), shares):
            best[system, code] = max(best.get((system, code), 0.0), float(share))
        rows = found.filter(pl.col("note_id") == note_id)
        got = {(s, c): v for s, c, v in rows.select("system", "code", "coverage").iter_rows()}
        assert got.keys() == {key for key, value in best.items() if value > 0}
        assert all(value == pytest.approx(best[key], rel=1e-5) for key, value in got.items())


def test_coverage_bounds_do_not_change_candidates(monkeypatch):
    search = OntologySearch(name="coverage", top_k=1, measure="coverage").index(TERMS)
    monkeypatch.setattr("coder.candidates.ontology_search.EXACT_FIRST", 10**6)
    expected = search.candidates(NOTES)
    monkeypatch.setattr("coder.candidates.ontology_search.EXACT_FIRST", 1)
    monkeypatch.setattr("coder.candidates.ontology_search.SIMILARITY_BUDGET", 1)
    assert_frame_equal(search.candidates(NOTES), expected, check_exact=True)


def test_searches_of_the_same_terms_share_one_index(cache, tmp_path):
    fitted = {measure: OntologySearch(name=measure, top_k=2, measure=measure).index(TERMS) for measure in MEASURES}
    for measure, search in fitted.items():
        search.save(tmp_path / measure)
    cosine, coverage = (OntologySearch.load(tmp_path / measure, terms=fitted[measure].terms_) for measure in MEASURES)
    assert coverage.term_matrix_ is cosine.term_matrix_ and coverage.by_term_ is cosine.by_term_
    assert_frame_equal(coverage.candidates(NOTES), fitted["coverage"].candidates(NOTES))


def test_unknown_measure_is_a_usage_error():
    with pytest.raises(UsageError, match="measure"):
        OntologySearch(measure="jaccard").index(TERMS)


@pytest.mark.parametrize("measure", ["cosine", "coverage"])
@pytest.mark.parametrize("threads", [1, 3])
def test_score_gives_the_exact_score_of_any_code_also_outside_the_top_k(measure, threads, monkeypatch):
    monkeypatch.setattr("coder.candidates.ontology_search.SEARCH_THREADS", threads)
    every = OntologySearch(name=measure, top_k=10, measure=measure).index(TERMS).candidates(NOTES)
    search = OntologySearch(name=measure, top_k=1, measure=measure).index(TERMS)
    keys = pl.DataFrame({"note_id": ["a", "a", "c", "c", "b", "d"], "system": [CM, PCS, CM, CM, CM, CM],
                         "code": ["E11.9", "0DTJ", "I10", "Z99.9", "I10", "J45.909"]})
    scored = search.score(NOTES, keys)
    expected = {key[:3]: key[3] for key in every.select("note_id", "system", "code", measure).iter_rows()}
    # a code the index lacks (Z99.9) and a note without text (b) give no row; no match scores 0
    assert {(n, s, c) for n, s, c in scored.select("note_id", "system", "code").iter_rows()} == {
        ("a", CM, "E11.9"), ("a", PCS, "0DTJ"), ("c", CM, "I10"), ("d", CM, "J45.909")}
    for note_id, system, code, value in scored.iter_rows():
        assert value == pytest.approx(expected.get((note_id, system, code), 0.0), rel=1e-6)
    assert scored.columns == ["note_id", "system", "code", measure]
    assert search.score(NOTES, keys.filter(pl.col("code") == "Z99.9")).schema == scored.schema


def test_searches_sharing_a_vectorizer_vectorise_each_note_once_with_unchanged_scores(cache, tmp_path, monkeypatch):
    keys = pl.DataFrame({"note_id": ["a", "c"], "system": [CM, CM], "code": ["E11.9", "I10"]})
    searches = {measure: OntologySearch(name=measure, top_k=2, measure=measure).index(TERMS) for measure in MEASURES}
    expected = {measure: (search.candidates(NOTES), search.score(NOTES, keys)) for measure, search in searches.items()}
    for measure, search in searches.items():
        search.save(tmp_path / measure)
    loaded = {measure: OntologySearch.load(tmp_path / measure, terms=searches[measure].terms_) for measure in MEASURES}
    vectorizer = loaded["cosine"].vectorizer_
    assert loaded["coverage"].vectorizer_ is vectorizer
    calls = []
    transform = vectorizer.transform
    monkeypatch.setattr(vectorizer, "transform", lambda texts: calls.append(len(texts)) or transform(texts))
    # coverage first: its vectors (ones) must not overwrite what the cosine search reads next
    for measure in ("coverage", "cosine", "coverage"):
        assert_frame_equal(loaded[measure].candidates(NOTES), expected[measure][0], check_exact=True)
        assert_frame_equal(loaded[measure].score(NOTES, keys), expected[measure][1], check_exact=True)
    # each sentence once (the searches' threads vectorise their own notes)
    assert sum(calls) == sum(len(sentence_spans(text)) for text in NOTES["text"])


def test_sentence_memo_holds_at_most_memo_chars(monkeypatch):
    monkeypatch.setattr("coder.candidates.ontology_search.MEMO_CHARS", len(NOTES["text"][0]))
    expected = OntologySearch(top_k=10).index(TERMS).candidates(NOTES)
    search = OntologySearch(top_k=10).index(TERMS)
    memo = _sentence_memo(search.vectorizer_)
    for _ in range(2):  # the second time, notes dropped from the memo are vectorised again
        assert_frame_equal(search.candidates(NOTES), expected, check_exact=True)
        assert sum(len(text) for _, text in memo._held) <= len(NOTES["text"][0])


def test_a_text_repeated_under_another_note_id_is_vectorised_again():
    search = OntologySearch(top_k=10).index(TERMS)
    calls = []
    transform = search.vectorizer_.transform
    search.vectorizer_.transform = lambda texts: calls.append(len(texts)) or transform(texts)
    first = search.candidates(NOTES.filter(pl.col("note_id") == "d"))
    again = search.candidates(NOTES.filter(pl.col("note_id") == "d").with_columns(pl.lit("e").alias("note_id")))
    assert calls == [1, 1]  # the memo serves a note (id and text), not a text under any id
    assert_frame_equal(again, first.with_columns(pl.lit("e").alias("note_id")), check_exact=True)


@pytest.mark.parametrize("lengths", [[1, 3, 1, 2, 1], [1, 1, 1], [4]])
def test_code_maxima_are_each_codes_maximum_over_its_terms(lengths):
    starts = np.cumsum([0, *lengths[:-1]])
    values = np.random.default_rng(0).normal(size=(3, sum(lengths))).astype(np.float32)
    maxima = CodeMaxima.of(np.append(starts, sum(lengths)))
    np.testing.assert_array_equal(maxima(values), np.maximum.reduceat(values, starts, axis=1))
    np.testing.assert_array_equal(maxima(values[1]), np.maximum.reduceat(values[1], starts))


def test_peak_is_the_elementwise_maximum_of_the_sentence_vectors():
    vectors = sparse.random(6, 40, density=0.2, format="csr", dtype=np.float32, random_state=1)
    features, peak = _peak(vectors)
    expected = vectors.max(axis=0).tocsr()
    np.testing.assert_array_equal(features, expected.indices)
    np.testing.assert_array_equal(peak, expected.data)
    assert peak.dtype == np.float32
