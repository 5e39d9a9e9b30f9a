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
from coder.errors import CoderError, InputFileError, UsageError
from coder.io.read import plan_inputs
from coder.schema import NOTE_ID, PREDICTION_SCHEMA, QUARANTINE_SCHEMA, TEXT

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def notes() -> pl.DataFrame:
    examples = pl.read_parquet(EXAMPLES / "notes.parquet").select(NOTE_ID, TEXT).head(6)
    bad = pl.DataFrame({NOTE_ID: ["blank", None, examples[NOTE_ID][0]], TEXT: ["  ", "text", "again"]})
    return pl.concat([examples, bad])


@pytest.fixture(scope="module")
def model(tiny_model_path) -> coder.api.CodingModel:
    return coder.load_model(tiny_model_path, device="cpu")


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


def test_predict_reads_other_column_names_and_refuses_missing_ones(notes, model):
    renamed = notes.rename({NOTE_ID: "id", TEXT: "body"})
    coded = model.predict(renamed, id_column="id", text_column="body", top_k=2)
    assert coded.predictions["rank"].max() == 2 and coded.predictions[NOTE_ID].n_unique() == 6
    with pytest.raises(InputFileError, match=r"<DataFrame>: missing text column 'text' in the notes \(columns: id, body\)"):
        model.predict(renamed, id_column="id")


def _pandas(frame: pl.DataFrame):
    pytest.importorskip("pandas")
    return frame.to_pandas()


@pytest.mark.parametrize("convert", [pl.DataFrame.lazy, pl.DataFrame.to_arrow, _pandas], ids=["lazyframe", "pyarrow", "pandas"])
def test_predict_takes_what_data_engineers_hold(notes, model, convert):
    expected = model.predict(notes)
    coded = model.predict(convert(notes))
    assert_frame_equal(coded.predictions, expected.predictions)
    assert_frame_equal(coded.quarantine, expected.quarantine)


def test_predict_refuses_what_is_no_frame(model):
    with pytest.raises(UsageError, match="notes must be a polars DataFrame or LazyFrame, a pandas DataFrame or a pyarrow "
                                         "Table, got dict"):
        model.predict({NOTE_ID: ["n1"], TEXT: ["fever"]})


def test_a_bytes_value_that_is_not_utf8_quarantines_its_row_as_the_cli_does(notes, model, tiny_model_path, tmp_path):
    frame = notes.head(3).with_columns(pl.col(TEXT).cast(pl.Binary))
    frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == 1).then(pl.lit(b"\xff\xfe")).otherwise(pl.col(TEXT)).alias(TEXT))
    coded = model.predict(frame)
    assert coded.quarantine.select(NOTE_ID, "row", "reason").rows() == [(notes[NOTE_ID][1], 1, "invalid_utf8")]
    assert coded.predictions[NOTE_ID].unique().sort().to_list() == sorted(notes[NOTE_ID][[0, 2]])
    path, out = tmp_path / "notes.parquet", tmp_path / "out.parquet"
    frame.write_parquet(path)
    result = runner.invoke(app, ["predict", str(path), "--out", str(out), "--model", str(tiny_model_path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert_frame_equal(coded.predictions, pl.read_parquet(out))


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        (NOTE_ID, pl.Series([1.0, float("nan"), None]), "id column 'note_id' is double, expected a string column"),
        (NOTE_ID, pl.Series([1, 2, 3]), "id column 'note_id' is int64, expected a string column"),
        (TEXT, pl.struct(pl.lit("a").alias("text"), pl.lit(1).alias("x")), "text column 'text' is struct<"),
    ],
    ids=["float-ids", "int64-ids", "struct-text"],
)
def test_ids_and_text_of_another_type_are_refused_as_the_cli_refuses_them(notes, model, tmp_path, column, values, message):
    frame = notes.head(3).with_columns(values.alias(column))
    with pytest.raises(InputFileError, match=f"^<DataFrame>: {message}") as raised:
        model.predict(frame)
    frame.write_parquet(path := tmp_path / "notes.parquet")
    with pytest.raises(InputFileError) as refused:
        plan_inputs(path, text_columns=model.model.text_columns)
    assert str(refused.value) == str(raised.value).replace("<DataFrame>", str(path))
    assert isinstance(raised.value, CoderError) and raised.value.exit_code == 3


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


def test_audit_takes_frames_of_any_kind_and_checks_them_as_the_cli_checks_files(notes, model):
    gold = pl.read_parquet(EXAMPLES / "gold.parquet")
    predictions = model.predict(notes).predictions
    expected = coder.audit(predictions, gold, model=model)
    assert coder.audit(predictions.to_arrow(), gold.lazy(), model=model) == expected
    with pytest.raises(InputFileError, match=r"^the gold frame: missing code column 'code' in the codes \(columns: note_id, system"):
        coder.audit(predictions, gold.drop("code"), model=model)
    with pytest.raises(InputFileError, match="^the predictions frame: integer column 'rank' is double, expected an integer column"):
        coder.audit(predictions.with_columns(pl.col("rank").cast(pl.Float64)), gold, model=model)
    with pytest.raises(UsageError, match="^the gold frame must be a polars DataFrame or LazyFrame, a pandas DataFrame or a "
                                         "pyarrow Table, got list"):
        coder.audit(predictions, [("n1", "R51", "ICD-10-CM")], model=model)
