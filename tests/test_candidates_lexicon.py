from __future__ import annotations

import polars as pl
from polars.testing import assert_frame_equal
import pytest

from coder.errors import ModelBundleError, NotFittedError
from coder.candidates.lexicon import EvidenceLexicon
from coder.candidates.words import Tokens, fold
from coder.schema import CM, PCS


@pytest.fixture(scope="module")
def lexicon(tiny_corpus) -> EvidenceLexicon:
    return EvidenceLexicon().fit(tiny_corpus)


def _candidates(lexicon: EvidenceLexicon, text: str) -> pl.DataFrame:
    return lexicon.candidates(pl.DataFrame({"note_id": ["x"], "text_es": [text]}))


@pytest.mark.parametrize(
    ("word", "folded"),
    [("Hipertensión", "hipertension"), ("ÚLCERAS", "ulcera"), ("asma", "asma"), ("dos", "dos"), ("tos", "tos")],
    ids=["accent", "plural-es-upper", "plain", "short-s-kept", "three-letters"],
)
def test_fold(word, folded):
    assert fold(word) == folded


def test_tokens_keep_offsets_and_sentences():
    tokens = Tokens.of("Dolor, fiebre. Tos")
    assert tokens.words == ("dolor", "fiebre", "tos")
    assert (tokens.starts, tokens.ends) == ((0, 7, 15), (5, 13, 18))
    assert tokens.sentences == (0, 0, 1)
    assert Tokens.of("Dolor, fiebre. Tos") is tokens  # kept for the other lexicon sources of the batch
    assert Tokens.of("Dolor, fiebre. Tos", plural_es=False) is not tokens


def test_exact_match_gives_code_reliability_and_offsets(lexicon):
    text = "Antecedentes: HIPERTENSION arterial."
    found = _candidates(lexicon, text).filter(pl.col("code") == "I10").row(0, named=True)
    # "hipertension arterial" occurs in 4 training notes and carried I10 in 3 (n2 negates it)
    assert found["lexicon_present"] == 4 and found["lexicon_support"] == 3
    assert found["lexicon"] == pytest.approx(3 / (4 + 1))
    assert text[found["evidence_start"] : found["evidence_end"]] == "HIPERTENSION arterial"
    assert not found["lexicon_set"] and not found["lexicon_negated"]
    assert found["lexicon_position"] == pytest.approx(found["evidence_start"] / len(text))


def test_word_boundaries_are_respected(lexicon):
    assert _candidates(lexicon, "Fantasma visto.").filter(pl.col("code") == "J45.909").is_empty()


def test_negation_cue_before_match(lexicon):
    found = _candidates(lexicon, "Niega asma.").filter(pl.col("code") == "J45.909")
    assert found["lexicon_negated"].to_list() == [True]


def test_reordered_words_match_as_token_set(lexicon):
    found = _candidates(lexicon, "Laparoscópica apendicectomía urgente.").filter(pl.col("code") == "0DTJ4ZZ")
    assert found.height == 1 and found["lexicon_set"].item() and found["system"].item() == PCS


def test_a_misspelt_word_matches_no_phrase(lexicon):
    assert _candidates(lexicon, "Apendicectomia abiertta.").filter(pl.col("code") == "0DTJ0ZZ").is_empty()
    assert not _candidates(lexicon, "Apendicectomia abierta.").filter(pl.col("code") == "0DTJ0ZZ").is_empty()


def test_save_load_round_trip(lexicon, tiny_codiesp, tmp_path):
    notes = tiny_codiesp[0]
    lexicon.save(tmp_path)
    loaded = EvidenceLexicon.load(tmp_path)
    assert loaded.get_params() == lexicon.get_params()
    assert_frame_equal(loaded.candidates(notes), lexicon.candidates(notes))


def test_unfitted_and_missing_folder(tmp_path):
    with pytest.raises(NotFittedError, match="not fitted"):
        EvidenceLexicon().candidates(pl.DataFrame({"note_id": ["x"], "text_es": ["asma"]}))
    with pytest.raises(ModelBundleError, match="lexicon.json"):
        EvidenceLexicon.load(tmp_path)


def test_empty_and_null_text(lexicon):
    frame = lexicon.candidates(pl.DataFrame({"note_id": ["a", "b"], "text_es": ["", None]}))
    assert frame.is_empty() and frame.columns[:3] == ["note_id", "system", "code"]
    assert CM  # systems come from the evidence, not from a fixed list
