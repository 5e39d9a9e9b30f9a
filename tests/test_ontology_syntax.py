"""Canonical spellings and system inference, without loading the ontology."""

from __future__ import annotations

import pytest

from coder.errors import CodeFormatError, UsageError
from coder.ontology import infer_system, normalize
from coder.ontology.syntax import shorter_prefix
from coder.schema import CM, PCS


@pytest.mark.parametrize(
    ("code", "system", "canonical"),
    [
        ("N44.8", CM, "N44.8"),
        ("n448", CM, "N44.8"),
        ("  n44.8 ", CM, "N44.8"),
        ("R51", CM, "R51"),
        ("r51.", CM, "R51"),
        ("w19xxxa", CM, "W19.XXXA"),
        ("C4A.0", CM, "C4A.0"),
        ("0dt6", PCS, "0DT6"),
        (" 3E0T3CZ", PCS, "3E0T3CZ"),
        ("B", PCS, "B"),
    ],
    ids=["dotted", "lower-no-dot", "spaces", "category", "trailing-dot", "placeholder-x", "letter-third",
         "pcs-prefix", "pcs-spaces", "pcs-section"],
)
def test_normalize_accepts_common_spellings(code: str, system: str, canonical: str) -> None:
    assert normalize(code, system) == canonical


@pytest.mark.parametrize(
    ("code", "system", "reason"),
    [
        ("", CM, "empty"),
        ("   ", PCS, "empty"),
        ("N44-8", CM, "only letters, digits and one dot"),
        ("N44.8.1", CM, "more than one dot"),
        ("N4.48", CM, "dot follows the third character"),
        ("0DT6", CM, "starts with a letter"),
        ("ZZZ.999", CM, "digit second"),
        ("N4", CM, "at least 3 characters"),
        ("N44.81234", CM, "at most 7 characters"),
        ("0DT6.JZZ", PCS, "no dot"),
        ("ADT6", PCS, "starts with a section"),
        ("0DT6JZZZ", PCS, "at most 7 characters"),
        ("0DO6", PCS, "neither I nor O"),
        ("N44 8", CM, "only letters, digits"),
        ("N44é", CM, "only letters, digits"),
    ],
    ids=["empty", "blank", "hyphen", "two-dots", "misplaced-dot", "cm-digit-first", "cm-letter-second",
         "cm-too-short", "cm-too-long", "pcs-dot", "pcs-bad-section", "pcs-too-long", "pcs-letter-o",
         "inner-space", "non-ascii"],
)
def test_normalize_rejects_garbage_with_a_reason(code: str, system: str, reason: str) -> None:
    with pytest.raises(CodeFormatError, match=reason) as caught:
        normalize(code, system)
    assert reason in caught.value.reason


def test_normalize_rejects_an_unknown_system() -> None:
    with pytest.raises(UsageError, match="expected one of ICD-10-CM, ICD-10-PCS"):
        normalize("N44.8", "ICD-9")


@pytest.mark.parametrize(
    ("code", "system"),
    [("N44.8", CM), ("n448", CM), ("B20", CM), ("X58", CM), ("0DT6", PCS), ("3E0T3CZ", PCS), ("BW03ZZZ", PCS),
     ("XW033E5", PCS), ("T14.90", CM)],
    ids=["dotted", "no-dot", "section-letter-digit-is-cm", "x-digit-is-cm", "pcs-digit", "pcs-full",
         "pcs-imaging", "pcs-new-tech", "cm-t"],
)
def test_infer_system(code: str, system: str) -> None:
    assert infer_system(code) == system


@pytest.mark.parametrize("code", ["ABC", "ZZ", "", "E-11"], ids=["letters", "two-letters", "empty", "hyphen"])
def test_infer_system_rejects_what_is_neither(code: str) -> None:
    with pytest.raises(CodeFormatError):
        infer_system(code)


@pytest.mark.parametrize(
    ("canonical", "system", "shorter"),
    [("W19.X", CM, "W19"), ("W19.XX", CM, "W19.X"), ("R51", CM, None), ("0DT6", PCS, "0DT"), ("0", PCS, None)],
    ids=["cm-after-dot", "cm-inside", "cm-category", "pcs", "pcs-section"],
)
def test_shorter_prefix(canonical: str, system: str, shorter: str | None) -> None:
    assert shorter_prefix(canonical, system) == shorter
