from __future__ import annotations

import logging

import polars as pl

from coder.model.folder import Label
from coder.ontology import load_ontology
from coder.ontology import canonical_codes
from coder.train.data import build_labels, label_matrix

CODES = pl.DataFrame(
    {
        "note_id": ["n1", "n1", "n2", "n2", "n2"],
        "code": ["I10", "0DTJ4ZZ", "ZZZ99", "e11.9", "ZZZ99"],
        "system": ["ICD-10-CM", "ICD-10-PCS", "ICD-10-CM", "ICD-10-CM", "ICD-10-CM"],
    }
)


def test_labels_are_canonical_and_unknown_codes_are_reported(tiny_ontology, caplog):
    canonical = canonical_codes(CODES, ontology=tiny_ontology)
    with caplog.at_level(logging.WARNING):
        labels = build_labels(canonical)
    assert labels.labels == (Label("ICD-10-CM", "E11.9"), Label("ICD-10-CM", "I10"), Label("ICD-10-PCS", "0DTJ4ZZ"))
    assert labels.unknown == ("ICD-10-CM ZZZ99",)
    assert "ICD-10-CM ZZZ99 x1" in caplog.text  # duplicates of a (note, code) count once
    targets = label_matrix(["n1", "n2"], canonical, labels=labels.labels)
    assert targets.tolist() == [[0, 1, 1], [1, 0, 0]]


def test_a_user_code_list_vouches_for_a_code_the_release_lacks(tmp_path):
    deleted = pl.DataFrame({"note_id": ["n1"], "code": ["3E0T3CZ"], "system": ["ICD-10-PCS"]})
    assert build_labels(canonical_codes(deleted, ontology=load_ontology())).labels == ()
    codes_file = tmp_path / "codes.tsv"
    codes_file.write_text("code\tdescription\tsystem\n3E0T3CZ\tIntroduction of anesthetic into peripheral nerves\tICD-10-PCS\n")
    vouched = build_labels(canonical_codes(deleted, ontology=load_ontology(codes_file=codes_file)))
    assert vouched.labels == (Label("ICD-10-PCS", "3E0T3CZ"),) and vouched.unknown == ()
