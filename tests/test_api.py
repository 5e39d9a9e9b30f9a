"""The Python API gives the CLI's rows and numbers: coder.load_model(...).predict(frame) and coder.audit(...)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

import coder
from cli import app
from coder.errors import UsageError
from coder.schema import NOTE_ID, PREDICTION_SCHEMA, QUARANTINE_SCHEMA, TEXT

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def notes() -> pl.DataFrame:
    examples = pl.read_parquet(EXAMPLES / "notes.parquet").select(NOTE_ID, TEXT).head(6)
    bad = pl.DataFrame({NOTE_ID: ["blank", None, examples[NOTE_ID][0]], TEXT: ["  ", "text", "again"]})
    return pl.concat([examples, bad])


def test_predict_returns_the_rows_coder_predict_writes(notes, tiny_model_path, tmp_path):
    path, out = tmp_path / "notes.parquet", tmp_path / "out.parquet"
    notes.write_parquet(path)
    result = runner.invoke(app, ["predict", str(path), "--out", str(out), "--model", str(tiny_model_path), "--quiet"])
    assert result.exit_code == 0, result.output
    coded = coder.load_model(tiny_model_path, device="cpu").predict(notes)
    assert coded.predictions.schema == PREDICTION_SCHEMA and coded.quarantine.schema == QUARANTINE_SCHEMA
    assert_frame_equal(coded.predictions, pl.read_parquet(out))
    written = pl.read_parquet(out.with_name("out.quarantine.parquet"))
    assert coded.quarantine.select(NOTE_ID, "row", "reason").rows() == written.select(NOTE_ID, "row", "reason").rows()
    assert set(coded.quarantine["reason"]) == {"empty_text", "null_note_id", "duplicate_note_id"}
    assert set(coded.quarantine["file"]) == {"<DataFrame>"}


def test_predict_reads_other_column_names_and_refuses_missing_ones(notes, tiny_model_path):
    model = coder.load_model(tiny_model_path, device="cpu")
    renamed = notes.rename({NOTE_ID: "id", TEXT: "body"})
    coded = model.predict(renamed, id_column="id", text_column="body", top_k=2)
    assert coded.predictions["rank"].max() == 2 and coded.predictions[NOTE_ID].n_unique() == 6
    with pytest.raises(UsageError, match=r"notes lack column\(s\) \['text'\]"):
        model.predict(renamed, id_column="id")


def test_audit_returns_what_coder_audit_json_prints(notes, tiny_model_path, tmp_path):
    path, out = tmp_path / "notes.parquet", tmp_path / "out.parquet"
    notes.write_parquet(path)
    runner.invoke(app, ["predict", str(path), "--out", str(out), "--model", str(tiny_model_path), "--quiet"])
    gold = EXAMPLES / "gold.parquet"
    printed = json.loads(runner.invoke(app, ["audit", str(out), "--gold", str(gold), "--json"]).stdout)
    assert coder.audit(out, gold) == printed
    model = coder.load_model(tiny_model_path, device="cpu")
    from_frames = coder.audit(model.predict(notes).predictions, pl.read_parquet(gold), model=model)
    assert {k: v["map"] for k, v in from_frames.items() if k != "valid_codes"} == {
        k: v["map"] for k, v in printed.items() if k not in ("valid_codes", "llm")}
