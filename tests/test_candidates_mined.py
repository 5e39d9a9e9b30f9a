"""MinedLexicon on synthetic notes: links from notes and codes alone, offsets, the negation flag, persistence."""

import polars as pl
import pytest

from coder.candidates.mined import MinedLexicon
from coder.errors import ModelBundleError
from coder.io.corpus import Corpus
from coder.schema import SPAN_SCHEMA

NOTES = pl.DataFrame({"note_id": [f"n{i}" for i in range(6)], "text": [
    "Patient with acute pancreatitis.\nCT of the abdomen.", "Known acute pancreatitis. Fever.",
    "Fever and cough.", "Fractured left femur after a fall.", "Cough. CT of the abdomen.", "Acute pancreatitis again."]})
CODES = pl.DataFrame({"note_id": ["n0", "n1", "n5", "n0", "n4", "n3", "n1", "n2"],
                      "code": ["K85.9", "K85.9", "K85.9", "BW20", "BW20", "S72.92", "R50.9", "R50.9"],
                      "system": ["ICD-10-CM"] * 3 + ["ICD-10-PCS"] * 2 + ["ICD-10-CM"] * 3})
TERMS = {"K85.9": "Acute pancreatitis, unspecified", "BW20": "Computerized Tomography (CT Scan) of Abdomen",
         "S72.92": "Unspecified fracture of left femur", "R50.9": "Fever, unspecified"}


class Terms:
    """The two ontology calls the lexicon makes, answered from TERMS."""

    def description(self, code, system):
        return TERMS[code]

    def inclusion_terms(self, code):
        return ()


def fitted(**params) -> MinedLexicon:
    corpus = Corpus(NOTES, CODES, pl.DataFrame(schema=SPAN_SCHEMA))
    return MinedLexicon(min_llr=0.0, max_tokens=6, **params).fit(corpus, ontology=Terms())


def _one(text: str) -> pl.DataFrame:
    return pl.DataFrame({"note_id": ["x"], "text": [text]})


def test_proposes_codes_with_offsets_into_the_text():
    text = "Admitted for acute pancreatitis; no fever."
    found = fitted().candidates(_one(text))
    row = found.filter(pl.col("code") == "K85.9").row(0, named=True)
    assert text[row["evidence_start"]:row["evidence_end"]] == row["evidence_text"]
    assert "pancreatitis" in row["evidence_text"].lower() and not row["mined_negated"]
    fever = found.filter(pl.col("code") == "R50.9").row(0, named=True)
    assert fever["mined_negated"] and fever["evidence_text"] == "fever"
    assert fever["mined_position"] == pytest.approx(text.index("fever") / len(text))
    assert fitted(negated_weight=0.0).candidates(_one(text)).filter(pl.col("code") == "R50.9")["mined"].item() == 0.0


def test_description_link_for_a_code_seen_once():
    assert "S72.92" in fitted().candidates(_one("Fracture of the left femur."))["code"].to_list()
    assert fitted(min_overlap=2.0).candidates(_one("fracture")).is_empty()
    assert fitted(descriptions=False).candidates(_one("Fracture of the left femur.")).is_empty()  # seen once: no link


def test_the_name_prefixes_every_column():
    found = fitted(name="mined_es").candidates(_one("acute pancreatitis"))
    assert {"mined_es", "mined_es_support", "mined_es_negated"} <= set(found.columns)


def test_save_load_round_trip(tmp_path):
    lexicon = fitted()
    lexicon.save(tmp_path)
    assert {p.suffix for p in tmp_path.iterdir()} == {".json", ".npz"}
    notes = NOTES.with_columns(pl.col("note_id") + "_new")
    assert MinedLexicon.load(tmp_path).candidates(notes).equals(lexicon.candidates(notes))


def test_a_folder_without_its_arrays_is_a_model_bundle_error(tmp_path):
    fitted().save(tmp_path)
    (tmp_path / "mined.npz").unlink()
    with pytest.raises(ModelBundleError, match="mined.npz"):
        MinedLexicon.load(tmp_path)


def test_best_mention_and_mentions_per_note_and_code():
    text = "No fever. Fever. Fever."
    notes = pl.DataFrame({"note_id": ["x", "empty", "y"], "text": [text, "", "acute pancreatitis"]})
    lexicon = fitted(negated_weight=0.5)
    found = lexicon.candidates(notes)
    fever = found.filter((pl.col("note_id") == "x") & (pl.col("code") == "R50.9")).row(0, named=True)
    # the negated first mention scores half: the best is the first affirmed one, after "No fever."
    assert (fever["mined_negated"], fever["evidence_start"], fever["mined_mentions"]) == (False, 10, 3)
    assert found.filter(pl.col("note_id") == "empty").is_empty()
    assert found["note_id"].unique(maintain_order=True).to_list() == ["x", "y"]  # notes in input order
    assert lexicon.candidates(notes.head(0)).is_empty() and lexicon.candidates(notes.head(0)).columns == found.columns


def test_german_notes_have_their_own_negation_words():
    notes = pl.DataFrame({"note_id": [f"d{i}" for i in range(4)], "text": [
        "Patient mit akuter Pankreatitis. Fieber.", "Fieber und Husten.", "Akute Pankreatitis erneut.", "Husten seit Tagen."]})
    codes = pl.DataFrame({"note_id": ["d0", "d0", "d1", "d2"], "code": ["K85.9", "R50.9", "R50.9", "K85.9"],
                          "system": ["ICD-10-CM"] * 4})
    german = MinedLexicon(min_llr=0.0, max_tokens=6, language="de", descriptions=False).fit(
        Corpus(notes, codes, pl.DataFrame(schema=SPAN_SCHEMA)))

    def negated(text: str) -> bool:
        return german.candidates(_one(text)).filter(pl.col("code") == "R50.9")["mined_negated"].item()

    assert negated("Kein Fieber, akute Pankreatitis.") and negated("Fieber wird verneint.")
    assert not negated("Fieber seit gestern.") and not negated("Kein Husten, aber Fieber.")


def test_looking_only_for_the_known_phrases_finds_each_occurrence_every_n_gram_finds():
    lexicon = fitted()
    text = "Acute pancreatitis with fever. CT of the abdomen: no acute pancreatitis; cough and fever again."
    known = [[found for found in lexicon.occurrences(text, within=within) if found[0] in lexicon.phrase_index_]
             for within in (None, lexicon.prefixes_)]
    assert known[0] and known[1] == known[0]
