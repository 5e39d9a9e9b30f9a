"""The languages a lexicon source knows: the few word lists and the plural rule that depend on it.

A lexicon matches folded words (``coder.candidates.words.fold``), so these lists and the plural rule
are all it needs to know of a language; a new language is one entry in ``LANGUAGES``. Kept apart
from the lexicons so that the command line can offer the choice without loading them.
"""

from __future__ import annotations

from dataclasses import dataclass

from coder.errors import UsageError


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
    "de": Language(
        stopwords=frozenset(
            "der die das den dem des ein eine einer eines einem einen und oder mit von vom zum zur zu im in am an auf aus "
            "bei nach vor für über unter ist war sind wurde wurden als auch sich seit wegen durch".split()),
        negation_cues=("kein", "keine", "keinen", "keinem", "keiner", "keines", "nicht", "ohne", "verneint", "negativ",
                       "ausgeschlossen", "ausschluss", "weder", "nie"),
        negation_after=("negativ", "ausgeschlossen", "verneint"),
        negation_stop=("aber", "jedoch", "außer", "ausser", "allerdings", "obwohl", "sondern"),
        plural_es=False,
    ),
}


def language(name: str) -> Language:
    if name not in LANGUAGES:
        raise UsageError(f"language must be one of {sorted(LANGUAGES)}, got {name!r}")
    return LANGUAGES[name]
