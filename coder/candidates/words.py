"""Words of a note for the lexicon sources: folding (lower case, accents removed, a plural ending
stripped) and tokens with offsets. What depends on the language is in ``coder.languages``."""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from dataclasses import dataclass

WORD = re.compile(r"\w+")
SENTENCE_END = re.compile(r"[.;:!?\n]")
# Texts whose tokens are kept: both text columns of a default 256-note batch.
TOKENS_KEPT = 512


def fold(word: str, *, plural_es: bool = True) -> str:
    """Lower case, accents removed, a trailing plural ``-s`` (and, with ``plural_es``, ``-es``) stripped."""
    word = word.lower()
    if not word.isascii():  # most words are, and Unicode decomposition is the costly step
        word = "".join(ch for ch in unicodedata.normalize("NFD", word) if not unicodedata.combining(ch))
    if plural_es and len(word) > 4 and word.endswith("es"):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not (not plural_es and word.endswith("ss")):
        return word[:-1]
    return word


@functools.lru_cache(maxsize=64)
def folded(words: tuple[str, ...], *, plural_es: bool) -> frozenset[str]:
    """The folded forms of a word list (cached: the lists are read for every note)."""
    return frozenset(fold(word, plural_es=plural_es) for word in words)


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
        words, starts, ends, sentences = [], [], [], []
        for m in WORD.finditer(text):
            words.append(fold(m.group(), plural_es=plural_es))
            starts.append(m.start())
            ends.append(m.end())
            sentences.append(bisect.bisect_left(boundaries, m.start()))
        return Tokens(tuple(words), tuple(starts), tuple(ends), tuple(sentences))
