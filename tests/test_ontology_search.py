from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from coder.errors import ModelBundleError, NotFittedError
from coder.ontology.search import TERMS_SCHEMA, OntologySearch, ontology_terms
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
    return OntologySearch(top_k=2).fit(TERMS)


def test_ontology_terms_has_descriptions_inclusion_terms_and_pcs_prefixes(tiny_ontology):
    terms = ontology_terms(tiny_ontology)
    assert (CM, "I10", "High blood pressure") in terms.rows()
    assert (CM, "E11.9", "Type 2 diabetes mellitus without complications") in terms.rows()
    assert (PCS, "0DTJ", "Resection of Appendix") in terms.rows()  # the 4-axis prefix CodiEsp codes with


def test_best_sentence_is_the_evidence(search):
    text = "Seen today.\nShe has high blood pressure and takes pills."
    found = search.candidates(pl.DataFrame({"note_id": ["a"], "text": [text]}))
    top = found.filter(pl.col("system") == CM).row(0, named=True)
    assert top["code"] == "I10" and top["ontology_rank"] == 1
    assert text[top["evidence_start"] : top["evidence_end"]] == "She has high blood pressure and takes pills"
    assert found.filter(pl.col("system") == CM).height <= 2


@pytest.mark.parametrize("char_ngrams", [None, (3, 4)], ids=["words-only", "chars-3-4"])
def test_words_and_characters_both_rank_the_described_code_first(char_ngrams):
    search = OntologySearch(char_ngrams=char_ngrams).fit(TERMS)
    found = search.candidates(pl.DataFrame({"note_id": ["a"], "text": ["Appendix resection was done."]}))
    assert found.filter(pl.col("system") == PCS)["code"].to_list() == ["0DTJ"]


def test_note_without_sentences_gives_no_rows(search):
    found = search.candidates(pl.DataFrame({"note_id": ["a", "b"], "text": ["", None]}))
    assert found.is_empty() and "ontology" in found.columns


def test_save_load_round_trip(search, tmp_path):
    notes = pl.DataFrame({"note_id": ["a"], "text": ["asthma and type 2 diabetes"]})
    search.save(tmp_path)
    assert_frame_equal(OntologySearch.load(tmp_path).candidates(notes), search.candidates(notes))


def test_unfitted_and_missing_folder(tmp_path):
    with pytest.raises(NotFittedError, match="not fitted"):
        OntologySearch().candidates(pl.DataFrame({"note_id": ["a"], "text": ["x"]}))
    with pytest.raises(ModelBundleError, match="terms.parquet"):
        OntologySearch.load(tmp_path)
