from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from coder.errors import ModelBundleError, NotFittedError
from coder.candidates.tfidf import TfidfClassifier
from coder.io.corpus import Corpus


@pytest.fixture(scope="module")
def classifier(tiny_corpus) -> TfidfClassifier:
    return TfidfClassifier(min_df=1, top_k=2).fit(tiny_corpus)


def test_top_k_per_system_ranked_by_score(classifier, tiny_codiesp):
    notes = tiny_codiesp[0]
    found = classifier.candidates(notes)
    assert found.group_by("note_id", "system").len()["len"].max() <= 2
    top = found.filter((pl.col("note_id") == "n2") & (pl.col("system") == "ICD-10-CM")).sort("tfidf", descending=True)
    assert top["code"][0] == "J45.909"


def test_a_notes_scores_are_the_same_bits_alone_and_in_a_batch(tiny_codiesp):
    """Many training notes and labels, each label of one note: ties everywhere, and a dense product of
    another batch height would round them apart."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    notes = pl.DataFrame({"note_id": [f"n{i}" for i in range(400)],
                          "text": [" ".join(rng.choice(words, size=40)) for _ in range(400)]})
    codes = pl.DataFrame({"note_id": [f"n{i // 3}" for i in range(1200)], "code": [f"C{i}" for i in range(1200)],
                          "system": "ICD-10-CM"})
    classifier = TfidfClassifier(min_df=1).fit(Corpus(notes, codes, tiny_codiesp[2].clear()))
    batch = notes.head(64)
    alone = np.concatenate([classifier.decision_function(batch.slice(i, 1)) for i in range(batch.height)])
    np.testing.assert_array_equal(classifier.decision_function(batch), alone)


def test_save_load_round_trip(classifier, tiny_codiesp, tmp_path):
    notes = tiny_codiesp[0]
    classifier.save(tmp_path)
    assert_frame_equal(TfidfClassifier.load(tmp_path).candidates(notes), classifier.candidates(notes))


def test_unfitted_and_missing_folder(tmp_path):
    with pytest.raises(NotFittedError, match="not fitted"):
        TfidfClassifier().candidates(pl.DataFrame({"note_id": ["a"], "text": ["x"]}))
    with pytest.raises(ModelBundleError, match="tfidf.json"):
        TfidfClassifier.load(tmp_path)


def test_codes_of_the_same_training_notes_tie_and_the_cut_keeps_the_first_by_code(tiny_codiesp):
    notes = pl.DataFrame({"note_id": ["n0", "n1", "n2", "n3"],
                          "text": ["chronic cough", "dry cough at night", "broken wrist", "wrist pain"]})
    codes = pl.DataFrame({"note_id": ["n0", "n0", "n1", "n1", "n2", "n3"], "code": ["R05", "J41", "R05", "J41", "S62", "S62"],
                          "system": "ICD-10-CM"})
    classifier = TfidfClassifier(min_df=1, top_k=1).fit(Corpus(notes, codes, tiny_codiesp[2].clear()))
    found = classifier.candidates(pl.DataFrame({"note_id": ["x"], "text": ["cough"]}))
    assert found["code"].to_list() == ["J41"]
