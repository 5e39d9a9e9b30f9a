from __future__ import annotations

import copy
import json
import math

import numpy as np
import polars as pl
import pytest

from coder.candidates.backfill import backfill
from coder.candidates.ontology_search import terms_digest
from coder.candidates.term_match import TermMatch, term_stems
from coder.errors import ModelBundleError
from coder.io.corpus import Corpus
from coder.schema import CM, GOLD_SCHEMA, PCS, SPAN_SCHEMA
from coder.train.stacking import default_sources
from standin import assemble

# Training notes: "diabetes" is in all three, "hyperglycemia" and "hypertension" in one each.
TRAIN = pl.DataFrame({"note_id": ["t1", "t2", "t3"], "text": [
    "Type 2 diabetes mellitus with hyperglycemia.", "Diabetes and essential hypertension.", "Diabetes follow-up."]})
NOTES = pl.DataFrame({"note_id": ["a", "b", "c"], "text": [
    "Known type 2 diabetes mellitus, now with hyperglycemia. Essential hypertension on treatment.",
    "Type 2 diabetes. Mellitus with hyperglycemia was ruled out.",  # the words of E11.65 in two sentences
    None]})


CORPUS = Corpus(TRAIN, pl.DataFrame(schema=GOLD_SCHEMA), pl.DataFrame(schema=SPAN_SCHEMA))  # idf reads no codes


@pytest.fixture(scope="module")
def fitted(tiny_ontology) -> TermMatch:
    return TermMatch().fit(CORPUS, ontology=tiny_ontology)


def test_it_proposes_codes_whose_term_one_sentence_holds_whole(fitted):
    found = fitted.candidates(NOTES)
    a = {code: row for code, *row in found.filter(pl.col("note_id") == "a").select(
        "code", "term_match", "term_match_missing", "term_match_rank").iter_rows()}
    # whole in its first sentence: "Type 2 diabetes mellitus" (E11) and "... with hyperglycemia" (E11.65);
    # not "Type 1 ..." (E10: digits count), "Essential (primary) hypertension" ("primary" missing)
    assert set(a) == {"E11", "E11.65"}
    assert a["E11.65"][1] == a["E11"][1] == 0.0
    assert a["E11.65"][0] > a["E11"][0] and (a["E11.65"][2], a["E11"][2]) == (1, 2)
    assert found.filter(pl.col("note_id") == "b").height == 0  # no sentence holds a term whole
    assert found.filter(pl.col("note_id") == "c").height == 0
    assert (found["system"] == CM).all()  # procedures are not matched by default


def test_matched_words_weigh_by_their_idf_over_the_training_notes(fitted):
    keys = pl.DataFrame({"note_id": ["a", "a"], "system": [CM, CM], "code": ["E11.65", "I10"]})
    scored = {code: (matched, missing) for code, matched, missing in fitted.score(NOTES, keys).select(
        "code", "term_match", "term_match_missing").iter_rows()}
    idf = lambda notes_with: math.log(4 / (notes_with + 1))  # noqa: E731
    # E11.65: 2, mellitu, hypergl (1 training note each; 7 letters keep "hyperglycemia" and "hypertension"
    # apart), diabete (3: idf 0); "type", like "with", is a filler word
    assert scored["E11.65"] == (pytest.approx(3 * idf(1), rel=1e-5), pytest.approx(0.0, abs=1e-5))
    # I10: its best term is "Essential (primary) hypertension": essenti and hyperte found, "primary" (no note) missing
    assert scored["I10"] == (pytest.approx(2 * idf(1), rel=1e-5), pytest.approx(idf(0), rel=1e-5))


def test_scores_come_from_the_best_sentence_and_leave_out_codes_without_a_word_in_the_note(fitted):
    keys = pl.DataFrame({"note_id": ["b", "b", "b", "c"], "system": [CM, CM, CM, CM],
                         "code": ["E11.65", "J45.909", "R99", "E11.65"]})
    scored = fitted.score(NOTES, keys)
    assert scored["code"].to_list() == ["E11.65"]  # J45.909: no word in note b; R99 unknown; note c has no text
    whole = fitted.score(NOTES, keys.with_columns(pl.lit("a").alias("note_id")).head(1))
    assert 0 < scored["term_match"].item() < whole["term_match"].item()
    assert scored["term_match_missing"].item() > 0


def test_it_backfills_the_other_sources_candidates(fitted):
    frames = {"lexicon": pl.DataFrame({"note_id": ["a"], "system": [CM], "code": ["I10"], "lexicon": [0.8]}),
              "term_match": fitted.candidates(NOTES.head(1))}
    filled = backfill(frames, sources=[fitted], notes=NOTES.head(1))
    merged = {row["code"]: row for row in assemble(filled, prior=pl.DataFrame(
        schema={"system": pl.String, "code": pl.String, "prior": pl.Int64})).iter_rows(named=True)}
    assert merged["I10"]["term_match"] == 0.0 and merged["I10"]["term_match_all"] > 0
    assert merged["I10"]["term_match_missing"] > 0 and merged["I10"]["source"] == "lexicon"
    assert merged["E11.65"]["term_match_all"] == merged["E11.65"]["term_match"] > 0


def test_saved_and_loaded_it_gives_the_same_candidates_and_scores(fitted, tmp_path):
    fitted.save(tmp_path / "tm")
    # the model folder stores the terms once for every source; the term match records their digest
    assert [p.name for p in (tmp_path / "tm").iterdir()] == ["term_match.json"]
    assert json.loads((tmp_path / "tm" / "term_match.json").read_text())["terms_sha256"] == terms_digest(fitted.terms_)
    loaded = TermMatch.load(tmp_path / "tm", terms=fitted.terms_)
    assert loaded.candidates(NOTES).equals(fitted.candidates(NOTES))
    keys = pl.DataFrame({"note_id": ["a", "b"], "system": [CM, CM], "code": ["I10", "E11.9"]})
    assert loaded.score(NOTES, keys).equals(fitted.score(NOTES, keys))


@pytest.mark.parametrize("terms", ["other", "none"], ids=["other-terms", "no-terms"])
def test_loading_without_the_terms_it_was_fitted_on_is_a_model_bundle_error(fitted, tmp_path, terms):
    fitted.save(tmp_path)
    with pytest.raises(ModelBundleError, match="not the terms it was fitted on"):
        TermMatch.load(tmp_path, terms=fitted.terms_.head(3) if terms == "other" else None)


def test_procedures_are_matched_when_asked(tiny_ontology):
    source = TermMatch(systems=(CM, PCS)).fit(CORPUS, ontology=tiny_ontology)
    notes = pl.DataFrame({"note_id": ["p"], "text": ["Resection of the appendix, open approach."]})
    assert set(source.candidates(notes)["code"].to_list()) >= {"0DTJ0ZZ", "0DTJ"}


def test_coder_train_fits_it_for_english_text_only():
    assert "term_match" in [source.name for source in default_sources()]
    assert "term_match" not in [source.name for source in default_sources(text_column="text", language="de")]


def test_a_batch_gives_each_note_what_it_gets_alone(fitted):
    # more notes than are matched at once (NOTES_AT_ONCE), in several chunks
    notes = pl.concat([NOTES.with_columns(pl.col("note_id") + f"-{i}") for i in range(12)])
    keys = notes.select("note_id").join(pl.DataFrame({"system": [CM] * 3, "code": ["E11.65", "I10", "E11.9"]}), how="cross")
    together = (fitted.candidates(notes), fitted.score(notes, keys))
    alone = [(fitted.candidates(notes[i : i + 1]), fitted.score(notes[i : i + 1], keys)) for i in range(notes.height)]
    for batch, single in zip(together, zip(*alone)):
        assert batch.sort("note_id", "code").equals(pl.concat(single).sort("note_id", "code"))


def test_fits_of_the_same_terms_share_their_stems_and_fit_the_same_arrays(tiny_ontology):
    term_stems.cache_clear()
    first = TermMatch().fit(CORPUS, ontology=tiny_ontology)
    other_notes = Corpus(TRAIN.head(2), pl.DataFrame(schema=GOLD_SCHEMA), pl.DataFrame(schema=SPAN_SCHEMA))
    second = TermMatch().fit(other_notes, ontology=tiny_ontology)  # another fold: other notes, the same terms
    assert term_stems.cache_info().hits == 1 and second.stem_terms_ is first.stem_terms_
    term_stems.cache_clear()
    alone = TermMatch().fit(other_notes, ontology=tiny_ontology)  # the same fit with nothing cached
    assert alone.stem_terms_ is not second.stem_terms_ and dict(alone.vocabulary_) == dict(second.vocabulary_)
    for name in ("stem_terms_", "idf_terms_"):
        assert (getattr(alone, name) != getattr(second, name)).nnz == 0
    for name in ("idf_", "term_code_", "term_words_", "term_idf_"):
        assert np.array_equal(getattr(alone, name), getattr(second, name))
    assert not np.array_equal(first.idf_, second.idf_)  # the idf is each fit's own
    assert not first.stem_terms_.data.flags.writeable  # shared, so never changed


def test_matching_only_the_terms_that_can_be_kept_gives_what_every_term_gives(fitted):
    # candidates read only the terms whose rarest stem a sentence holds; the backfill only the terms of
    # the codes asked for
    holders = np.diff(fitted.stem_terms_.indptr)
    for column in range(fitted.anchor_terms_.shape[1]):
        stems = fitted.stem_terms_[:, column].indices
        (anchor,) = fitted.anchor_terms_[:, column].indices
        assert anchor in stems and holders[anchor] == holders[stems].min()
    every_stem = copy.copy(fitted)
    every_stem.anchor_terms_ = fitted.stem_terms_  # every term sharing a stem with a sentence is read
    assert every_stem.candidates(NOTES).equals(fitted.candidates(NOTES))
    keys = NOTES.select("note_id").join(fitted.codes_, how="cross")
    asked = keys.filter(pl.col("code").is_in(["E11.65", "I10", "J45.909"]))
    every_code = fitted.score(NOTES, keys).join(asked, on=["note_id", "system", "code"], how="semi")
    assert every_code.sort("note_id", "code").equals(fitted.score(NOTES, asked).sort("note_id", "code"))
