"""`coder train --evidence`: PLM-ICD, ONNX and the candidate stack in one model folder."""

from __future__ import annotations

import polars as pl
import pytest
from typer.testing import CliRunner

from cli import app
from coder.model.scorer import STACK_DIR, load_predictor
from coder.train.build import build_model
from coder.train.plm import TrainingOptions

runner = CliRunner()


def test_evidence_without_dev_is_a_usage_error(tiny_model_path, tmp_path):
    data = tiny_model_path.parent / "data"
    evidence = tmp_path / "evidence.parquet"
    pl.DataFrame({"note_id": ["n"], "system": ["ICD-10-CM"], "code": ["R51"], "evidence_es": ["x"], "offsets_es": ["0 1"]}).write_parquet(evidence)
    result = runner.invoke(app, [
        "train", "--notes", str(data / "notes.parquet"), "--codes", str(data / "codes.parquet"),
        "--evidence", str(evidence), "--out", str(tmp_path / "m"),
    ])
    assert result.exit_code == 2
    assert "--evidence needs --dev-notes and --dev-codes" in result.output


@pytest.mark.slow
def test_one_command_builds_a_reranked_model(tiny_model_path, tiny_codiesp, tmp_path):
    notes, codes, evidence = tiny_codiesp
    paths = {name: tmp_path / f"{name}.parquet" for name in ("notes", "codes", "evidence")}
    for name, frame in zip(paths, (notes, codes, evidence), strict=True):
        frame.write_parquet(paths[name])
    out = tmp_path / "model"
    build_model(
        notes=paths["notes"], codes=paths["codes"], out=out, dev_notes=paths["notes"], dev_codes=paths["codes"],
        evidence=paths["evidence"], dev_evidence=None, text_column="text",
        encoder_path=tiny_model_path.parent / "encoder", encoder_name="tiny", codes_file=None,
        options=TrainingOptions(epochs=1), resume=False, command="test", folds=2,
    )
    assert (out / STACK_DIR / "stack.json").is_file()
    predictor = load_predictor(out, device="cpu")
    assert predictor.text_columns == ("text", "text_es")
    predictions = predictor.predict(notes, top_k=5).predictions
    assert predictions["source"].str.contains("lexicon").any()
    assert predictions.group_by("note_id", "system").agg(pl.col("rank").max())["rank"].max() <= 5
    plm_only = load_predictor(out, device="cpu", rerank=False).predict(notes, top_k=5).predictions
    assert set(plm_only["source"]) == {"plm_icd"}
