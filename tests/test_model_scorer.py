from __future__ import annotations

import polars as pl
import pytest

from coder.model.folder import default_model_path, read_config
from coder.errors import ModelBundleError, UsageError
from coder.model.scorer import load_predictor
from coder.schema import NOTE_ID, PREDICTION_SCHEMA, SYSTEM


@pytest.fixture(scope="module")
def predictor(tiny_model_path):
    return load_predictor(tiny_model_path, device="cpu")


@pytest.fixture(scope="module")
def notes(tiny_model_path):
    return pl.read_parquet(tiny_model_path.parent / "data" / "notes.parquet").head(4)


def test_auto_precision_picks_int8_on_cpu_and_exposes_the_contract(predictor):
    assert predictor.precision == "int8"
    assert predictor.execution_provider == "CPUExecutionProvider"
    assert predictor.text_columns == ("text",)
    assert len(predictor.model_hash) == 64


def test_predictions_follow_the_schema_with_ranks_per_system(predictor, notes):
    result = predictor.predict(notes, top_k=3)
    frame = result.predictions
    assert frame.schema == PREDICTION_SCHEMA
    counts = frame.group_by(NOTE_ID, SYSTEM).len()
    assert counts["len"].max() <= 3 and counts.height == 2 * notes.height
    ranks = frame.group_by(NOTE_ID, SYSTEM).agg(pl.col("rank").sort())["rank"].to_list()
    assert all(r == list(range(1, len(r) + 1)) for r in ranks)
    assert frame["score"].is_between(0, 1).all() and (frame["source"] == "plm_icd").all()
    assert frame.group_by(NOTE_ID, SYSTEM).agg(pl.col("score").is_sorted(descending=True))["score"].all()
    assert result.unprocessable == ()


def test_evidence_is_the_word_at_the_attention_peak(predictor, notes):
    frame = predictor.predict(notes, top_k=2).predictions.filter(pl.col("evidence_start").is_not_null())
    texts = dict(notes.iter_rows())
    for note_id, start, end, evidence in frame.select(NOTE_ID, "evidence_start", "evidence_end", "evidence_text").iter_rows():
        assert texts[note_id][start:end] == evidence and evidence.isalnum()


def test_threshold_only_keeps_codes_above_threshold(predictor, notes):
    frame = predictor.predict(notes, top_k=50, threshold_only=True).predictions
    assert frame["above_threshold"].all()


def test_truncated_and_unprocessable_notes_are_reported(predictor):
    batch = pl.DataFrame({NOTE_ID: ["long", "blank", "short"], "text": ["fever " * 400, "\u200b", "fever"]})
    result = predictor.predict(batch)
    assert result.truncated == ("long",)
    assert result.unprocessable == ("blank",)
    assert set(result.predictions[NOTE_ID]) == {"long", "short"}


def test_missing_text_column_and_bad_top_k_are_usage_errors(predictor):
    with pytest.raises(UsageError, match=r"lacks column\(s\) \['text'\]"):
        predictor.predict(pl.DataFrame({NOTE_ID: ["a"], "body": ["x"]}))
    with pytest.raises(UsageError, match="top_k must be >= 1"):
        predictor.predict(pl.DataFrame({NOTE_ID: ["a"], "text": ["x"]}), top_k=0)


def test_unknown_precision_is_refused(tiny_model_path):
    with pytest.raises(UsageError, match="precision must be one of"):
        load_predictor(tiny_model_path, precision="int4")


@pytest.mark.slow
def test_shipped_model_codes_real_dev_notes():
    try:
        path = default_model_path()
    except ModelBundleError as error:
        pytest.skip(f"shipped model absent: {error}")
    if not read_config(path).onnx:
        pytest.skip(f"shipped model at {path} not exported yet: run `coder export {path}`")
    predictor = load_predictor(path, device="cpu")
    notes = pl.read_parquet(path.parents[1] / "data" / "codiesp" / "dev" / "notes.parquet", columns=[NOTE_ID, "text"]).head(5)
    result = predictor.predict(notes, top_k=10)
    assert result.predictions.schema == PREDICTION_SCHEMA
    assert set(result.predictions[NOTE_ID]) == set(notes[NOTE_ID])
    assert set(result.predictions[SYSTEM]) == {"ICD-10-CM", "ICD-10-PCS"}


def test_auto_precision_falls_back_to_what_is_on_disk(tiny_model_path, tmp_path):
    import shutil

    from coder.model.scorer import _choose_precision

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_path, folder)
    config = read_config(folder)
    assert _choose_precision(folder, config, "auto", gpu=True) == "fp16"
    (folder / "onnx" / "model.int8.onnx").unlink()
    assert _choose_precision(folder, config, "auto", gpu=False) == "fp32"
