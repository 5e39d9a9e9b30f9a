"""Labelled corpora: the code rows `coder train` and `coder audit` read are all-or-nothing."""

from __future__ import annotations

import re

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from coder.errors import InputFileError
from coder.io.corpus import Corpus
from coder.schema import CM, EVIDENCE_FILE_OFFSETS, EVIDENCE_FILE_TEXT, PCS, SPAN_SCHEMA


@pytest.mark.parametrize(
    ("codes", "spans", "message"),
    [
        ({"system": [CM, "cm"]}, {}, "codes.parquet: column 'system' has unknown values 'cm' (1 row)"),
        ({"note_id": [None, "n1"]}, {}, "codes.parquet: column 'note_id' is null in 1 of 2 rows (0-based: 0)"),
        ({}, {"code": [None]}, "evidence.parquet: column 'code' is null in 1 of 1 rows (0-based: 0)"),
    ],
    ids=["codes-system", "codes-null-id", "evidence-null-code"],
)
def test_training_reads_code_rows_with_the_audits_checks(tmp_path, codes, spans, message):
    notes, gold, evidence = (tmp_path / f"{name}.parquet" for name in ("notes", "codes", "evidence"))
    pl.DataFrame({"note_id": ["n1"], "text": ["fever"]}).write_parquet(notes)
    pl.DataFrame({"note_id": ["n1", "n1"], "code": ["R50.9", "0DTJ0ZZ"], "system": [CM, PCS]} | codes).write_parquet(gold)
    pl.DataFrame({"note_id": ["n1"], "system": [CM], "code": ["R50.9"], "evidence_es": ["fiebre"], "offsets_es": ["0 6"]}
                 | spans, schema_overrides={"code": pl.String}).write_parquet(evidence)
    with pytest.raises(InputFileError, match=re.escape(message)):
        Corpus.read(notes, gold, evidence, text_columns=["text"])


@pytest.mark.parametrize("column", ["text_es", "text"], ids=["codiesp-default", "evidence-column"])
def test_the_evidence_files_columns_are_read_as_spans_into_their_column(tmp_path, column):
    notes, gold, evidence = (tmp_path / f"{name}.parquet" for name in ("notes", "codes", "evidence"))
    pl.DataFrame({"note_id": ["n1"], "text": ["fever"], "text_es": ["fiebre"]}).write_parquet(notes)
    pl.DataFrame({"note_id": ["n1"], "code": ["R50.9"], "system": [CM]}).write_parquet(gold)
    pl.DataFrame({"note_id": ["n1"], "system": [CM], "code": ["R50.9"], EVIDENCE_FILE_TEXT: ["fiebre"],
                  EVIDENCE_FILE_OFFSETS: ["0 6"]}).write_parquet(evidence)
    corpus = Corpus.read(notes, gold, evidence, text_columns=["text"], optional=["text_es"], evidence_column=column)
    assert_frame_equal(corpus.spans(column), pl.DataFrame([("n1", CM, "R50.9", "fiebre", "0 6")], schema=SPAN_SCHEMA, orient="row"))
    assert corpus.spans({"text_es": "text", "text": "text_es"}[column]).is_empty()
