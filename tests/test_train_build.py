"""`coder train --evidence`: PLM-ICD, ONNX and the candidate stack in one model folder."""

from __future__ import annotations

import polars as pl
import pytest
from typer.testing import CliRunner

from cli import app
from coder.model.folder import read_config
from coder.model.load import load_model
from coder.pipeline import code_batch
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
    config = read_config(out)
    assert [s.name for s in config.sources] == ["lexicon", "ontology", "tfidf"]
    assert {r.sources for r in config.rerankers} == {
        ("lexicon", "ontology", "tfidf"), ("ontology", "tfidf"), ("lexicon", "ontology", "tfidf", "plm_icd"),
        ("ontology", "tfidf", "plm_icd")}
    assert not [f for f in out.rglob("*") if f.suffix in (".pkl", ".joblib", ".pt")]
    model = load_model(out, device="cpu")
    assert model.text_columns == ("text", "text_es")
    predictions = code_batch(model, notes, top_k=5).predictions
    assert predictions["source"].str.contains("lexicon").any()
    assert predictions.group_by("note_id", "system").agg(pl.col("rank").max())["rank"].max() <= 5
    english = code_batch(model, notes.select("note_id", "text"), top_k=5).predictions
    assert not english["source"].str.contains("lexicon").any() and english.height
