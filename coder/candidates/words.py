"""Words of a note for the lexicon sources: folding, and the few word lists that depend on the language.

A lexicon matches folded words (lower case, accents removed, a plural ending stripped), so these
lists and the plural rule are all it needs to know of a language. A new language is one entry in
``LANGUAGES``.
"""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from dataclasses import dataclass

from coder.errors import UsageError

WORD = re.compile(r"\w+")
SENTENCE_END = re.compile(r"[.;:!?\n]")
# Texts whose tokens are kept: both text columns of a default 256-note batch.
TOKENS_KEPT = 512


@dataclass(frozen=True)
class Language:
    """What a lexicon knows of a language."""

    stopwords: frozenset[str]
    """Function words: a phrase does not start or end with one, and token-set keys leave them out."""
    negation_cues: tuple[str, ...]
    """Words that negate what follows them in their clause ("no", "sin", "denies")."""
    negation_after: tuple[str, ...]
    """Words that negate what precedes them ("... negative", "... excluded")."""
    negation_stop: tuple[str, ...]
    """Words that end a negation's reach ("but", "except")."""
    plural_es: bool
    """Whether a trailing ``-es`` is a plural ending to strip (Spanish) besides ``-s``."""


LANGUAGES: dict[str, Language] = {
    "es": Language(
        stopwords=frozenset("de la el los las del en y con por a al un una unos unas para que se o e lo su sus".split()),
        negation_cues=("no", "sin", "niega", "niegan", "descarta", "descartan", "descartandose", "descartado",
                       "descartada", "descartar", "negativo", "negativa", "ausencia", "ni"),
        negation_after=("negativo", "negativa", "descartado", "descartada", "ausente"),
        negation_stop=("pero", "excepto", "salvo", "aunque", "que"),
        plural_es=True,
    ),
    "en": Language(
        stopwords=frozenset(
            "a an the of in on at to for with and or by from as is was were be been are this that these those his her "
            "its their he she it which who whom there than then into after before during under over also all any".split()),
        negation_cues=("no", "not", "denies", "denied", "deny", "without", "negative", "ruled", "excluded", "absence",
                       "absent", "nor", "neither", "never"),
        negation_after=("negative", "excluded", "ruled", "absent"),
        negation_stop=("but", "except", "apart", "however", "although", "aside", "which", "who", "presenting", "showing"),
        plural_es=False,
    ),
}


def language(name: str) -> Language:
    if name not in LANGUAGES:
        raise UsageError(f"language must be one of {sorted(LANGUAGES)}, got {name!r}")
    return LANGUAGES[name]


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
