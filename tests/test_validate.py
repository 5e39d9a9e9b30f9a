"""The one gate: which codes may be written, and where their validity comes from."""

from __future__ import annotations

import polars as pl
import pytest

from coder.ontology import load_ontology
from coder.schema import CM, PCS
from coder.validate import AssignableCodes, truncation_levels


@pytest.fixture(scope="module")
def codiesp_like(tmp_path_factory):
    """The release with a code list holding a deleted code, and CodiEsp's truncation levels."""
    codes_file = tmp_path_factory.mktemp("list") / "codes.tsv"
    codes_file.write_text("code\tdescription\tsystem\n3E0T3CZ\tIntroduction of anesthetic\tICD-10-PCS\n")
    return AssignableCodes(load_ontology(codes_file), truncations={PCS: (4,), CM: (6,)})


@pytest.mark.parametrize(
    ("code", "system", "assignable"),
    [
        ("N44.8", CM, True), ("R51", CM, True),  # billable, and a category (valid)
        ("0DTJ4ZZ", PCS, True), ("0DT6", PCS, True),  # a code, and a truncation at a level the labels use
        ("10E0XZ", PCS, False), ("BW21Z", PCS, False), ("B", PCS, False), ("0", PCS, False),  # other prefixes
        ("S00.32X", CM, True), ("W19.X", CM, False),  # a placeholder truncation at a used level, and one not
        ("3E0T3CZ", PCS, True),  # the code list vouches for it
        ("ZZZ.999", CM, False), ("0ZZZZZZ", PCS, False),
    ],
)
def test_assignable(codiesp_like, code, system, assignable):
    assert codiesp_like(code, system) is assignable


def test_validate_keeps_assignable_rows_and_says_where_validity_comes_from(codiesp_like):
    frame = pl.DataFrame({"note_id": ["a"] * 4, "system": [PCS, PCS, PCS, CM], "code": ["0DT6", "10E0XZ", "3E0T3CZ", "N44.8"],
                          "score": [0.4, 0.3, 0.2, 0.1]})
    kept = codiesp_like.validate(frame)
    assert kept.select("code", "validity").rows() == [("0DT6", "release"), ("3E0T3CZ", "code_list"), ("N44.8", "release")]


def test_truncation_levels_are_the_lengths_of_the_labels_that_are_prefixes():
    ontology = load_ontology()
    labels = [(PCS, "0DT6"), (PCS, "0DTJ4ZZ"), (CM, "S00.32X"), (CM, "N44.8")]
    assert truncation_levels(labels, ontology=ontology) == {CM: (6,), PCS: (4,)}
