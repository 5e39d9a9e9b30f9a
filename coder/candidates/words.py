"""Words, stems and sentences of a note, for every source and the span projection: folding (lower
case, accents removed, a plural ending stripped), stems, tokens with offsets and the four ways a
text is cut into pieces. What depends on the language is in ``coder.languages``."""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

WORD = re.compile(r"\w+")
# The four cuts differ and each source was fitted with its own: unifying them changes outputs.
# Tokens' sentences (lexicon sources, term match): a full stop, semicolon, colon, ! or ? or a line end.
SENTENCE_END = re.compile(r"[.;:!?\n]")
# The mined lexicon's clauses: a sentence also ended by a comma or a parenthesis.
CLAUSE_END = re.compile(r"[.;:!?\n,()]")
# The searches' sentences (``sentence_spans``): pieces between line ends, full stops and semicolons.
_SEARCH_SENTENCE = re.compile(r"[^\n.;]+")
# The projection's segments (``translation_segments``): English lines, or Spanish sentences (a line end, or
# ". " before a capital, digit or opening mark).
_LINE_BREAK = re.compile(r"\n+")
_ES_BREAK = re.compile(r"\n+|(?<=[.!?])\s+(?=[¿¡(\"'«]?[A-ZÁÉÍÓÚÑÜ0-9])")
# Texts whose tokens are kept: both text columns of a default 256-note batch.
TOKENS_KEPT = 512


@functools.lru_cache(maxsize=1 << 17)
def fold(word: str, *, plural_es: bool = True) -> str:
    """Lower case, accents removed, a trailing plural ``-s`` (and, with ``plural_es``, ``-es``) stripped.
    Remembered: the notes of a batch and the ontology's terms repeat the same words."""
    word = word.lower()
    if not word.isascii():  # most words are, and Unicode decomposition is the costly step
        word = "".join(ch for ch in unicodedata.normalize("NFD", word) if not unicodedata.combining(ch))
    if plural_es and len(word) > 4 and word.endswith("es"):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not (not plural_es and word.endswith("ss")):
        return word[:-1]
    return word


def word_stem(word: str, length: int) -> str:
    """The first ``length`` letters of a folded word, standing for it ("prostatic" ~ "prostate" at 7)."""
    return word[:length]


@functools.lru_cache(maxsize=64)
def folded(words: tuple[str, ...], *, plural_es: bool) -> frozenset[str]:
    """The folded forms of a word list (cached: the lists are read for every note)."""
    return frozenset(fold(word, plural_es=plural_es) for word in words)


def leading_runs(phrases: Iterable[tuple[str, ...]]) -> frozenset[tuple[str, ...]]:
    """Every phrase's leading words, the phrase included: a run of a note's words that is none of them
    begins no phrase, so a lexicon's matching stops there."""
    return frozenset(words[:end] for words in phrases for end in range(1, len(words) + 1))


@dataclass(frozen=True)
class Tokens:
    """A text cut into folded words with character offsets and the sentence each word is in."""

    words: tuple[str, ...]
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    sentences: tuple[int, ...]

    @staticmethod
    @functools.lru_cache(maxsize=TOKENS_KEPT)
    def of(text: str, *, plural_es: bool = True) -> Tokens:
        """The tokens of ``text``; the same text read by two lexicon sources of a batch (the
        evidence and the mined lexicon of a column) is tokenized once."""
        boundaries = [m.start() for m in SENTENCE_END.finditer(text)]
        found = list(WORD.finditer(text))
        starts = tuple(m.start() for m in found)
        return Tokens(tuple(fold(m.group(), plural_es=plural_es) for m in found), starts, tuple(m.end() for m in found),
                      tuple(np.searchsorted(boundaries, starts).tolist()))


def sentence_spans(text: str | None) -> np.ndarray:
    """[n_sentences, 2] start/end offsets of the sentences of ``text`` (split at line ends, full
    stops and semicolons; blank pieces left out)."""
    return np.array([(m.start(), m.end()) for m in _SEARCH_SENTENCE.finditer(text or "") if m.group().strip()],
                    dtype=np.int64).reshape(-1, 2)


def translation_segments(text: str, language: str) -> list[tuple[int, int]]:
    """Character ranges of the sentences of ``text``, blank ends trimmed: English lines, or Spanish sentences."""
    cuts = [m.span() for m in (_ES_BREAK if language == "es" else _LINE_BREAK).finditer(text)]
    out, start = [], 0
    for lo, hi in [*cuts, (len(text), len(text))]:
        piece = text[start:lo]
        if piece.strip():
            left = len(piece) - len(piece.lstrip())
            out.append((start + left, start + len(piece.rstrip())))
        start = hi
    return out
