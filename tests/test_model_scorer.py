"""The chunk-and-score stage (PLM-ICD on onnxruntime) and a model folder without rerankers end to end."""

from __future__ import annotations

import shutil

import polars as pl
import pytest

from coder.candidates.backfill import backfill
from coder.errors import ModelBundleError, UsageError
from coder.model.folder import default_model_path, read_config
from coder.assembly import load_model
from coder.model.scorer import choose_precision
from coder.pipeline import code_batch
from coder.schema import CM, CODE, KEY, NOTE_ID, PLM_ICD, PREDICTION_SCHEMA, SYSTEM


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return load_model(tiny_model_path, device="cpu")


@pytest.fixture(scope="module")
def notes(tiny_model_path):
    return pl.read_parquet(tiny_model_path.parent / "data" / "notes.parquet").head(4)


def test_auto_precision_picks_int8_on_cpu_and_exposes_the_contract(model):
    assert model.precision == "int8"
    assert model.execution_provider == "CPUExecutionProvider"
    assert model.text_columns == ("text",)
    assert len(model.hash) == 64 and "plm_icd" in model.components


def test_predictions_follow_the_schema_with_ranks_per_system(model, notes):
    coded = code_batch(model, notes, top_k=3)
    frame = coded.predictions
    assert frame.schema == PREDICTION_SCHEMA
    counts = frame.group_by(NOTE_ID, SYSTEM).len()
    assert counts["len"].max() <= 3 and counts.height == 2 * notes.height
    ranks = frame.group_by(NOTE_ID, SYSTEM).agg(pl.col("rank").sort())["rank"].to_list()
    assert all(r == list(range(1, len(r) + 1)) for r in ranks)
    assert frame["score"].is_between(0, 1).all() and (frame["source"] == "plm_icd").all()
    assert (frame["validity"] == "release").all()
    assert frame.group_by(NOTE_ID, SYSTEM).agg(pl.col("score").is_sorted(descending=True))["score"].all()
    assert coded.unprocessable == () and {"seconds.score", "seconds.rank"} <= set(coded.counts)


def test_evidence_is_the_word_at_the_attention_peak(model, notes):
    frame = code_batch(model, notes, top_k=2).predictions.filter(pl.col("evidence_start").is_not_null())
    texts = dict(notes.iter_rows())
    for note_id, start, end, evidence in frame.select(NOTE_ID, "evidence_start", "evidence_end", "evidence_text").iter_rows():
        assert texts[note_id][start:end] == evidence and evidence.isalnum()


def test_threshold_only_keeps_every_code_above_its_threshold(model, notes):
    everything = code_batch(model, notes, top_k=50).predictions
    above = code_batch(model, notes, top_k=50, threshold_only=True).predictions
    assert above["above_threshold"].all()
    assert above.height == everything["above_threshold"].sum()


def test_plm_icd_backfills_the_codes_other_sources_propose_with_its_own_scores(model, notes):
    scored = model.scorer.score(notes, top_n=2)
    own = scored.candidates.select(*KEY, PLM_ICD).join(scored.score(notes, scored.candidates.select(KEY)), on=list(KEY))
    assert own.height == scored.candidates.height and own[PLM_ICD].to_list() == own[f"{PLM_ICD}_right"].to_list()
    first = notes[NOTE_ID][0]
    below = scored.labels.filter(pl.col(SYSTEM) == CM).join(
        scored.candidates.filter(pl.col(NOTE_ID) == first), on=[SYSTEM, CODE], how="anti").row(0, named=True)
    lexicon = pl.DataFrame({NOTE_ID: [first] * 2, SYSTEM: [CM] * 2, CODE: [below[CODE], "Z99.99"], "lexicon": [0.5] * 2})
    filled = backfill({"lexicon": lexicon, PLM_ICD: scored.candidates}, sources=[scored], notes=notes)
    added = filled[PLM_ICD].filter(pl.col(f"{PLM_ICD}_rank").is_null())
    assert added[CODE].to_list() == [below[CODE]]  # Z99.99 is no label of the model: nothing to say
    assert added[f"{PLM_ICD}_all"].item() == pytest.approx(float(scored.scores[0, below["column"]]))
    assert added[PLM_ICD].null_count() == 1  # scored, not proposed


def test_truncated_and_unprocessable_notes_are_reported(model):
    batch = pl.DataFrame({NOTE_ID: ["long", "blank", "short"], "text": ["fever " * 400, "\u200b", "fever"]})
    coded = code_batch(model, batch, top_k=5)
    assert coded.truncated == ("long",)
    assert coded.unprocessable == ("blank",)
    assert set(coded.predictions[NOTE_ID]) == {"long", "short"}


def test_missing_text_column_is_a_usage_error(model):
    with pytest.raises(UsageError, match=r"notes lack column 'text'"):
        code_batch(model, pl.DataFrame({NOTE_ID: ["a"], "body": ["x"]}), top_k=5)


def test_unknown_precision_is_refused(tiny_model_path):
    with pytest.raises(UsageError, match="precision must be one of"):
        load_model(tiny_model_path, precision="int4")


def test_auto_precision_falls_back_to_what_is_on_disk(tiny_model_path, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_path, folder)
    config = read_config(folder)
    assert choose_precision(folder, config, "auto", gpu=True) == "fp16"
    (folder / "onnx" / "model.int8.onnx").unlink()
    assert choose_precision(folder, config, "auto", gpu=False) == "fp32"


@pytest.mark.slow
def test_shipped_model_codes_real_dev_notes():
    try:
        path = default_model_path()
    except ModelBundleError as error:
        pytest.skip(f"shipped model absent: {error}")
    model = load_model(path, device="cpu")
    notes = pl.read_parquet(path.parents[1] / "data" / "codiesp" / "dev" / "notes.parquet").head(5)
    coded = code_batch(model, notes, top_k=10)
    assert coded.predictions.schema == PREDICTION_SCHEMA
    assert set(coded.predictions[NOTE_ID]) == set(notes[NOTE_ID])
    assert set(coded.predictions[SYSTEM]) == {"ICD-10-CM", "ICD-10-PCS"}
    assert {"lexicon", "ontology", "tfidf", "plm_icd"} <= set("+".join(coded.predictions["source"]).split("+"))
