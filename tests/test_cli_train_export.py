from __future__ import annotations

import polars as pl
import pytest
from typer.testing import CliRunner

from cli import app
from coder.model.folder import read_config
from coder.model.load import load_model
from coder.pipeline import code_batch

runner = CliRunner()


@pytest.mark.parametrize("command", ["train", "export"], ids=["train", "export"])
def test_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_train_export_predict_end_to_end(tiny_model_path, tmp_path):
    data = tiny_model_path.parent / "data"
    notes, codes = tmp_path / "notes.parquet", tmp_path / "codes.parquet"
    pl.read_parquet(data / "notes.parquet").head(10).write_parquet(notes)
    pl.read_parquet(data / "codes.parquet").write_parquet(codes)
    out = tmp_path / "model"
    trained = runner.invoke(app, [
        "train", "--notes", str(notes), "--codes", str(codes), "--dev-notes", str(notes), "--dev-codes", str(codes),
        "--encoder", str(tiny_model_path.parent / "encoder"), "--sentence-encoder", str(tiny_model_path.parent / "encoder"),
        "--epochs", "1", "--out", str(out),
    ])
    assert trained.exit_code == 0, trained.output
    config = read_config(out)
    assert config.dev_metrics["epoch"] == 1 and not out.with_name("model.checkpoint").exists()
    exported = runner.invoke(app, ["export", str(out), "--dev-notes", str(notes), "--dev-codes", str(codes), "--no-fp16"])
    assert exported.exit_code == 0, exported.output
    config = read_config(out)
    assert config.onnx["fp32"]["parity"]["logits"] <= 1e-4
    assert "int8" in config.onnx and "dev_map" in config.onnx["int8"]
    coded = code_batch(load_model(out, device="cpu", precision="fp32"), pl.read_parquet(notes), top_k=2)
    assert coded.predictions.height == 2 * 2 * 10


def test_train_refuses_an_out_folder_that_is_not_a_model(tiny_model_path, tmp_path):
    data = tiny_model_path.parent / "data"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("do not delete")
    result = runner.invoke(app, [
        "train", "--notes", str(data / "notes.parquet"), "--codes", str(data / "codes.parquet"),
        "--encoder", str(tiny_model_path.parent / "encoder"), "--out", str(tmp_path / "mine"),
    ])
    assert result.exit_code == 2 and "not a coder model folder" in result.output
    assert (tmp_path / "mine" / "thesis.txt").is_file()


def test_export_of_a_folder_without_config_is_a_bundle_error(tmp_path):
    result = runner.invoke(app, ["export", str(tmp_path)])
    assert result.exit_code == 5
    assert "coder_model.json is missing" in result.output


def test_train_refuses_an_unknown_language_before_training(tiny_model_path, tmp_path):
    data = tiny_model_path.parent / "data"
    result = runner.invoke(app, [
        "train", "--notes", str(data / "notes.parquet"), "--codes", str(data / "codes.parquet"),
        "--encoder", str(tiny_model_path.parent / "encoder"), "--out", str(tmp_path / "model"), "--language", "fr",
    ])
    assert result.exit_code == 2 and "'fr' is not one of 'de', 'en', 'es'" in result.output
    assert not (tmp_path / "model").exists()

