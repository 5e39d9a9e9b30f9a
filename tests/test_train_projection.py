"""Projection of evidence spans across languages, learned from parallel notes alone."""

import polars as pl

from coder.schema import SPAN_OFFSETS, SPAN_SCHEMA, SPAN_TEXT
from coder.train.projection import WordAligner, corpus_aligners, fit_aligners, project_corpus, symmetrize

# The same three findings in Spanish and English, in notes that share the words often enough to align.
SPANISH = ["Paciente con fiebre y tos. Dolor abdominal intenso.", "Tos seca. Fiebre alta.", "Dolor abdominal y fiebre.",
           "Fiebre. Tos.", "Dolor abdominal."] * 4
ENGLISH = ["Patient with fever and cough.\nSevere abdominal pain.", "Dry cough.\nHigh fever.", "Abdominal pain and fever.",
           "Fever.\nCough.", "Abdominal pain."] * 4
NOTES = pl.DataFrame({"note_id": [f"n{i}" for i in range(len(SPANISH))], "text_es": SPANISH, "text": ENGLISH})


def test_symmetrize():
    a, b = {(0, 0), (1, 1), (2, 3)}, {(0, 0), (1, 1), (2, 2)}
    assert symmetrize(a, b, "intersect") == {(0, 0), (1, 1)}
    assert symmetrize(a, b, "union") == a | b


def test_spans_land_on_their_translation():
    start = SPANISH[0].index("fiebre")
    evidence = pl.DataFrame([("n0", "ICD-10-CM", "R50.9", "fiebre", f"{start} {start + 6}")], schema=SPAN_SCHEMA, orient="row")
    projected = project_corpus(NOTES, evidence, corpus_aligners(NOTES))
    (text, offsets), = projected.select(SPAN_TEXT, SPAN_OFFSETS).rows()
    begin, end = map(int, offsets.split())
    assert ENGLISH[0][begin:end] == text == "fever"


def test_the_aligners_learn_translation_pairs():
    sentences, words = fit_aligners(NOTES)
    assert 0.5 < sentences.ratio_ < 2.0 and isinstance(words, WordAligner)
    assert words.links(["dolor", "abdominal"], ["abdominal", "pain"], "intersect")
