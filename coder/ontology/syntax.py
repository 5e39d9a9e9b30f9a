"""The shape of ICD-10 codes: one canonical spelling per system, and which system a code is in.

Canonical forms:
- ICD-10-CM: upper case, 3 to 7 characters, a dot after the third when more follow
  (``N44.8``, ``W19.XXXA``, ``R51``). A letter first, a digit second.
- ICD-10-PCS: upper case, 1 to 7 characters, no dot (``0DT6``, ``3E0T3CZ``). The first
  character is a section (0-9, B, C, D, F, G, H, X); PCS never uses the letters I and O.

System inference from the shape alone (``infer_system``):
1. a dot means CM (PCS has none);
2. a digit first means PCS (CM always starts with a letter);
3. a letter then a digit means CM, even when the letter is also a PCS section (``B20`` is
   read as CM; ``Ontology.lookup`` then falls back to PCS when only PCS knows the code, e.g.
   ``B020ZZZ``);
4. a PCS section letter then a letter means PCS (CM never has a letter second);
5. anything else is not a code.
"""

from __future__ import annotations

import re

from coder.errors import CodeFormatError, UsageError
from coder.schema import CM, PCS, SYSTEMS

PCS_SECTIONS: dict[str, str] = {
    "0": "Medical and Surgical",
    "1": "Obstetrics",
    "2": "Placement",
    "3": "Administration",
    "4": "Measurement and Monitoring",
    "5": "Extracorporeal or Systemic Assistance and Performance",
    "6": "Extracorporeal or Systemic Therapies",
    "7": "Osteopathic",
    "8": "Other Procedures",
    "9": "Chiropractic",
    "B": "Imaging",
    "C": "Nuclear Medicine",
    "D": "Radiation Therapy",
    "F": "Physical Rehabilitation and Diagnostic Audiology",
    "G": "Mental Health",
    "H": "Substance Abuse Treatment",
    "X": "New Technology",
}

_CM_BODY = re.compile(r"[A-Z][0-9][A-Z0-9]{1,5}")
_PCS_BODY = re.compile(r"[0-9A-HJ-NP-Z]{1,7}")


def check_system(system: str) -> str:
    """Return ``system`` if it is one of ``coder.schema.SYSTEMS``; raise UsageError otherwise."""
    if system not in SYSTEMS:
        raise UsageError(f"unknown code system {system!r}: expected one of {', '.join(SYSTEMS)}")
    return system


def _clean(code: str) -> str:
    if not isinstance(code, str):
        raise CodeFormatError(repr(code), f"expected a string, found {type(code).__name__}")
    text = code.strip().upper()
    if not text:
        raise CodeFormatError(code, "empty")
    if not all(ch.isascii() and (ch.isalnum() or ch == ".") for ch in text):
        raise CodeFormatError(code, "only letters, digits and one dot are allowed")
    return text


def _normalize_cm(code: str, text: str) -> str:
    if text.count(".") > 1:
        raise CodeFormatError(code, "more than one dot")
    if "." in text and text.index(".") != 3:
        raise CodeFormatError(code, "an ICD-10-CM dot follows the third character (N44.8)")
    body = text.replace(".", "")
    if not body[0].isalpha():
        raise CodeFormatError(code, "an ICD-10-CM code starts with a letter")
    if len(body) < 2 or not body[1].isdigit():
        raise CodeFormatError(code, "an ICD-10-CM code has a digit second")
    if len(body) < 3:
        raise CodeFormatError(code, "an ICD-10-CM code has at least 3 characters")
    if not _CM_BODY.fullmatch(body):
        raise CodeFormatError(code, "an ICD-10-CM code has at most 7 characters")
    return body if len(body) == 3 else f"{body[:3]}.{body[3:]}"


def _normalize_pcs(code: str, text: str) -> str:
    if "." in text:
        raise CodeFormatError(code, "ICD-10-PCS codes have no dot")
    if text[0] not in PCS_SECTIONS:
        raise CodeFormatError(code, f"an ICD-10-PCS code starts with a section ({''.join(PCS_SECTIONS)})")
    if len(text) > 7:
        raise CodeFormatError(code, "an ICD-10-PCS code has at most 7 characters")
    if not _PCS_BODY.fullmatch(text):
        raise CodeFormatError(code, "ICD-10-PCS uses neither I nor O")
    return text


def normalize(code: str, system: str) -> str:
    """The canonical spelling of ``code`` in ``system``: accepts lower case, a missing CM dot and
    surrounding spaces. Raises CodeFormatError (with ``reason``) for anything else, UsageError for
    an unknown system. Says nothing about whether the code exists: see ``Ontology.lookup``."""
    check_system(system)
    text = _clean(code)
    return _normalize_cm(code, text) if system == CM else _normalize_pcs(code, text)


def infer_system(code: str) -> str:
    """CM or PCS from the shape of ``code`` (rules in the module docstring); CodeFormatError if neither."""
    text = _clean(code)
    if "." in text:
        return CM
    first, second = text[0], text[1:2]
    if first.isdigit():
        return PCS
    if second.isdigit():
        return CM
    if first in PCS_SECTIONS:
        return PCS
    raise CodeFormatError(code, "neither ICD-10-CM (letter, digit, ...) nor ICD-10-PCS (section character first)")


def shorter_prefix(canonical: str, system: str) -> str | None:
    """``canonical`` less its last character, in canonical form: ``W19.X`` -> ``W19``,
    ``0DT6`` -> ``0DT``; None below the shortest form (a CM category, a PCS section)."""
    if system == CM:
        if len(canonical) <= 3:
            return None
        return canonical[:-2] if canonical[-2] == "." else canonical[:-1]
    return canonical[:-1] or None
