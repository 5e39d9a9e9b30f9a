"""Dense search with the tiny random encoder: exact-text matches, brute-force equality, evidence,
the cache (encoder ONNX and term vectors built once), and the encoder and terms checks on load."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import coder.candidates.dense_search as dense_search
from coder.candidates.dense_search import DenseSearch
from coder.candidates.ontology_search import TERMS_SCHEMA
from coder.errors import ModelBundleError, NotFittedError, UsageError
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


@pytest.fixture(scope="module")
def cache_folder(tmp_path_factory):
    """The module's cache folder: the tiny encoder is exported to ONNX once, not once per test."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def cache(cache_folder, monkeypatch):
    monkeypatch.setenv("CODER_CACHE_DIR", str(cache_folder))
    return cache_folder


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
        assert row["dense"] == pytest.approx(1.0, abs=1e-2) and row["dense_rank"] <= 2  # int8 term vectors
        assert text[row["evidence_start"] : row["evidence_end"]].strip() == sentence == row["evidence_text"].strip()
    assert set(found["note_id"]) == {"a", "c"}  # notes without sentences give no rows
    assert found.group_by("note_id", "system").len()["len"].max() == 2  # top_k


def test_scores_are_the_best_cosine_over_terms_and_sentences(search, monkeypatch):
    notes = NOTES.filter(pl.col("note_id").is_in(["a", "c"]))
    sentences = {note: [text[a:b] for a, b in dense_search.sentence_spans(text).tolist()] for note, text in notes.iter_rows()}
    vectors, scales = dense_search.quantise(search._encode(search.terms_["term"].to_list(), max_length=dense_search.TERM_TOKENS),
                                            levels=dense_search.TERM_LEVELS)
    terms = vectors * scales[:, None]
    for note, texts in sentences.items():
        # int8 with one scale for the note's sentences, as the search quantises them
        note_vectors, (note_scale,) = dense_search.quantise(search._encode(texts, max_length=dense_search.SENTENCE_TOKENS),
                                                            np.array([0, len(texts)]))
        best = ((note_vectors * note_scale) @ terms.T).max(axis=0)
        per_code = search.terms_.with_columns(pl.Series("best", best)).group_by("system", "code").agg(pl.col("best").max())
        found = search.candidates(notes).filter(pl.col("note_id") == note).join(per_code, on=["system", "code"])
        # the search encodes each note's sentences apart, as here: only float rounding differs
        np.testing.assert_allclose(found["dense"], found["best"], atol=1e-6)
    whole = search.candidates(notes)
    assert_frame_equal(pl.concat([search.candidates(notes.slice(i, 1)) for i in range(notes.height)]), whole)  # alone
    # blocks of one sentence and chunks of one term: each note alone, a sentence and a code at a time; the same rows
    monkeypatch.setattr(dense_search, "SENTENCE_BLOCK", 1)
    monkeypatch.setattr(dense_search, "TERM_CHUNK", 1)
    small = DenseSearch(top_k=2, encoder=search.encoder).index(TERMS)
    assert small.chunks_ == list(range(small.codes_.height + 1))  # I10's two terms: one chunk
    assert [block.shape[1] for block in small.term_blocks_] == np.diff(small.term_ptr_).tolist()
    assert_frame_equal(small.candidates(notes), whole)


def test_equal_scores_rank_and_cut_by_code_whatever_the_ontology_order(cache, encoder):
    terms = pl.DataFrame([(CM, "C", "Chronic cough"), (CM, "B", "Chronic cough"), (CM, "A", "Chronic cough")],
                         schema=TERMS_SCHEMA, orient="row")
    found = DenseSearch(top_k=2, encoder=encoder).index(terms).candidates(pl.DataFrame({"note_id": ["a"], "text": ["Chronic cough."]}))
    assert found.select("code", "dense_rank").rows() == [("A", 1), ("B", 2)]


def test_save_load_round_trip_reads_the_cache_and_checks_the_encoder_and_terms(search, tmp_path, monkeypatch, caplog):
    """A saved search carries a copy of its encoder (other than the packaged one), never a path outside it, and
    the digest of its terms, which the model folder stores once for every source."""
    search.save(tmp_path / "dense")
    assert sorted(p.name for p in (tmp_path / "dense").iterdir()) == ["dense.json", "encoder"]
    assert json.loads((tmp_path / "dense" / "dense.json").read_text())["params"]["encoder"] == "encoder"

    def no_export(*args, **kwargs):
        raise AssertionError("the cached encoder file should be used")

    monkeypatch.setattr("coder.candidates.sentence_encoder.build_sentence_encoder", no_export)
    with caplog.at_level(logging.INFO, logger="coder.candidates.dense_search"):
        loaded = DenseSearch.load(tmp_path / "dense", terms=search.terms_)
    assert "term vectors from" in caplog.text
    assert_frame_equal(loaded.candidates(NOTES), search.candidates(NOTES))
    with pytest.raises(ModelBundleError, match="not the terms it was fitted on"):
        DenseSearch.load(tmp_path / "dense", terms=search.terms_.head(3))

    loaded.save(tmp_path / "dense")  # saved where it was loaded from: its copy stays
    changed = tmp_path / "dense" / "encoder" / "config.json"
    changed.write_text(changed.read_text() + "\n")
    with pytest.raises(ModelBundleError, match="was built with"):
        DenseSearch.load(tmp_path / "dense", terms=search.terms_)


def test_an_encoder_holding_a_pickle_is_not_saved(search, encoder, tmp_path):
    pickled = tmp_path / "encoder"
    shutil.copytree(encoder, pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    search.encoder = str(pickled)
    with pytest.raises(UsageError, match=r"holds pickle files \(pytorch_model.bin\)"):
        search.save(tmp_path / "dense")


def test_an_unwritable_cache_folder_costs_a_warning_not_the_search(search, encoder, tmp_path, monkeypatch, caplog):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")  # the cache "folder" is a file: nothing can be written under it
    monkeypatch.setenv("CODER_CACHE_DIR", str(blocked))
    with caplog.at_level(logging.WARNING):
        found = DenseSearch(top_k=2, encoder=encoder).index(TERMS).candidates(NOTES)
    assert "cannot write the sentence encoder" in caplog.text
    assert_frame_equal(found, search.candidates(NOTES))


def test_unfitted_missing_folder_and_missing_encoder(cache, tmp_path):
    with pytest.raises(NotFittedError, match="not fitted"):
        DenseSearch().candidates(NOTES)
    with pytest.raises(ModelBundleError, match="dense.json"):
        DenseSearch.load(tmp_path)
    with pytest.raises(ModelBundleError, match="encoder folder .* not found"):
        DenseSearch(encoder=str(tmp_path / "nowhere")).index(TERMS)


def test_fit_reads_the_ontology_and_no_notes(cache, encoder, tiny_ontology):
    search = DenseSearch(encoder=encoder).fit(ontology=tiny_ontology)
    assert (CM, "I10") in set(search.codes_.iter_rows()) and sum(block.shape[1] for block in search.term_blocks_) == search.terms_.height
    assert all(block.dtype == np.int8 and block.flags.c_contiguous for block in search.term_blocks_)
    every = np.concatenate([search._terms(code) for code in range(search.codes_.height)])
    assert len(every) == search.terms_.height
    np.testing.assert_allclose(np.linalg.norm(every, axis=1), 1.0, atol=1e-2)


@pytest.mark.parametrize("bounds", [None, np.array([0, 3, 4, 50])])
def test_int8_keeps_each_component_within_half_a_step_of_its_group(bounds):
    rows = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
    rows[3] = 0.0  # a group of its own with the second bounds
    vectors, scales = dense_search.quantise(rows, bounds)
    per_row = np.repeat(scales, np.diff(np.arange(51) if bounds is None else bounds))[:, None]
    assert vectors.dtype == np.int8 and np.abs(vectors).max() == 127 and len(scales) == (50 if bounds is None else 3)
    assert np.all(np.abs(vectors * per_row - rows) <= per_row / 2 + 1e-6)
    assert not vectors[3].any()


def test_int8_cosines_stay_within_a_hundredth_of_float_ones():
    rng = np.random.default_rng(1)
    sentences, terms = (rows / np.linalg.norm(rows, axis=1, keepdims=True)
                        for rows in (rng.normal(size=(n, 384)).astype(np.float32) for n in (40, 3000)))
    terms[:40] = sentences + 0.3 * terms[:40]  # close pairs too
    terms /= np.linalg.norm(terms, axis=1, keepdims=True)
    (note, (note_scale,)), (ints, scales) = dense_search.quantise(sentences, np.array([0, 40])), dense_search.quantise(
        terms, levels=dense_search.TERM_LEVELS)
    products = note.astype(np.int32) @ ints.astype(np.int32).T * note_scale * scales
    assert np.abs(products - sentences @ terms.T).max() < 0.01


@pytest.mark.parametrize("lengths", [[3, 3, 4, 9, 30, 31], [40], list(range(1, 200)), [2, 2, 2, 2, 3, 3, 5, 7]])
def test_token_batches_cover_the_rows_in_order_within_the_bounds(lengths):
    lengths = np.array(lengths)
    batches = list(dense_search._token_batches(lengths, rows=8, tokens=32, spread=1.4))
    assert [i for b in batches for i in range(b.start, b.stop)] == list(range(len(lengths)))
    for b in batches:
        rows, longest = b.stop - b.start, lengths[b.stop - 1]
        assert rows <= 8 and (rows == 1 or (rows * longest <= 32 and longest <= 1.4 * lengths[b.start]))
        if b.stop < len(lengths) and rows < 8:  # as large as the bounds allow
            assert (rows + 1) * lengths[b.stop] > 32 or lengths[b.stop] > 1.4 * lengths[b.start]


def test_products_are_exact_at_the_extremes_of_both_ranges():
    # On CPUs without int8 dot-product instructions the u8 x s8 kernel sums pairs in saturating
    # int16: 7-bit terms keep the largest pair (255 x 63 x 2) inside it.
    rng = np.random.default_rng(0)
    sentences = rng.choice(np.array([-128, 127], dtype=np.int8), size=(8, 384))
    terms = rng.choice(np.array([-dense_search.TERM_LEVELS, dense_search.TERM_LEVELS], dtype=np.int8), size=(384, 64))
    terms[:, 0] = np.where(sentences[0] > 0, dense_search.TERM_LEVELS, -dense_search.TERM_LEVELS)  # every pair at its largest
    session = dense_search._products_session()
    (products,) = session.run(None, {"sentences": (sentences.astype(np.int16) + 128).astype(np.uint8), "terms": terms})
    assert (products == sentences.astype(np.int64) @ terms.astype(np.int64)).all()


def test_an_encoder_folder_without_its_tokenizer_is_a_bundle_error(cache, encoder, tmp_path):
    folder = tmp_path / "encoder"
    shutil.copytree(encoder, folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelBundleError, match="cannot read the tokenizer in .*encoder"):
        DenseSearch(encoder=str(folder)).index(TERMS)


@pytest.fixture(scope="module")
def sentence_layers(tiny_model_path, tmp_path_factory):
    """A layers file of the tiny encoder's second layer alone: a one-layer student, undistilled."""
    from safetensors.numpy import load_file

    from coder.candidates.sentence_encoder import write_layers

    weights = load_file(str(tiny_model_path.parent / "encoder" / "model.safetensors"))
    file = tmp_path_factory.mktemp("layers") / "layers.safetensors"
    write_layers(file, {name.removeprefix("bert.").replace(".layer.1.", ".layer.0."): tensor for name, tensor in weights.items()
                        if ".layer.1." in name})
    return file


def test_sentence_layers_encode_the_sentences_and_travel_with_the_saved_search(search, cache, encoder, sentence_layers,
                                                                               tmp_path):
    """The student's layers encode the note sentences, the terms keep the encoder's vectors (one cache entry),
    and a saved search carries its copy of the layers, checked by sha256 on load."""
    student = DenseSearch(top_k=2, encoder=encoder, sentence_layers=str(sentence_layers)).index(TERMS)
    vectors = len(list(cache.glob("dense-*.npz")))
    assert student.built_key_ == search.built_key_ and len(list(cache.glob("dense-*.npz"))) == vectors
    for a, b in zip(student.term_blocks_, search.term_blocks_, strict=True):
        np.testing.assert_array_equal(a, b)
    texts = ["Resection of Appendix", "High blood pressure"]
    assert not np.allclose(student._encode(texts, max_length=128, session=student.sentence_session_),
                           search._encode(texts, max_length=128))
    found = student.candidates(NOTES)
    assert not found.equals(search.candidates(NOTES))

    student.save(tmp_path / "dense")
    assert sorted(p.name for p in (tmp_path / "dense").iterdir()) == ["dense.json", "encoder", dense_search.LAYERS_FILE]
    assert json.loads((tmp_path / "dense" / "dense.json").read_text())["params"]["sentence_layers"] == dense_search.LAYERS_FILE
    assert_frame_equal(DenseSearch.load(tmp_path / "dense", terms=student.terms_).candidates(NOTES), found)
    changed = tmp_path / "dense" / dense_search.LAYERS_FILE
    changed.write_bytes(changed.read_bytes() + b" ")
    with pytest.raises(ModelBundleError, match="sentence layers .* the model was built with"):
        DenseSearch.load(tmp_path / "dense", terms=student.terms_)
    with pytest.raises(ModelBundleError, match="sentence layers file .* not found"):
        DenseSearch(encoder=encoder, sentence_layers=str(tmp_path / "nowhere.safetensors")).index(TERMS)
