"""Words, stems and the four ways a text is cut into pieces."""

import pytest

from coder.candidates.mined import tokenize
from coder.candidates.words import Tokens, sentence_spans, translation_segments, word_stem

TEXT = "Dolor (agudo), fiebre: tos.\nNo. 2"


def test_translation_segments_cut_spanish_sentences_and_english_lines():
    assert translation_segments("Tos seca. Fiebre alta.", "es") == [(0, 9), (10, 22)]
    assert translation_segments("Dry cough.\nHigh fever.", "en") == [(0, 10), (11, 22)]


def test_the_cuts_differ_as_documented():
    assert [TEXT[a:b] for a, b in sentence_spans(TEXT).tolist()] == ["Dolor (agudo), fiebre: tos", "No", " 2"]
    assert Tokens.of(TEXT).sentences == (0, 0, 0, 1, 3, 4)  # the colon ends a sentence here
    assert tokenize(TEXT, plural_es=True)[1].tolist() == [0, 1, 3, 4, 6, 7]  # and parentheses and commas a clause
    assert translation_segments(TEXT, "en") == [(0, 27), (28, 33)]


@pytest.mark.parametrize(("length", "expected"), [(5, "hyper"), (7, "hyperte")], ids=["mined", "term-match"])
def test_word_stem_keeps_the_first_letters(length, expected):
    assert word_stem("hypertension", length) == expected
