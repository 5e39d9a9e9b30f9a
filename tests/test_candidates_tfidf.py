from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from coder.errors import ModelBundleError, NotFittedError
from coder.candidates.tfidf import TfidfClassifier


@pytest.fixture(scope="module")
def classifier(tiny_corpus) -> TfidfClassifier:
    return TfidfClassifier(min_df=1, top_k=2).fit(tiny_corpus)


def test_top_k_per_system_ranked_by_score(classifier, tiny_codiesp):
    notes = tiny_codiesp[0]
    found = classifier.candidates(notes)
    assert found.group_by("note_id", "system").len()["len"].max() <= 2
    top = found.filter((pl.col("note_id") == "n2") & (pl.col("system") == "ICD-10-CM")).sort("tfidf", descending=True)
    assert top["code"][0] == "J45.909"


def test_save_load_round_trip(classifier, tiny_codiesp, tmp_path):
    notes = tiny_codiesp[0]
    classifier.save(tmp_path)
    assert_frame_equal(TfidfClassifier.load(tmp_path).candidates(notes), classifier.candidates(notes))


def test_unfitted_and_missing_folder(tmp_path):
    with pytest.raises(NotFittedError, match="not fitted"):
        TfidfClassifier().candidates(pl.DataFrame({"note_id": ["a"], "text": ["x"]}))
    with pytest.raises(ModelBundleError, match="tfidf.json"):
        TfidfClassifier.load(tmp_path)
