from __future__ import annotations

import shutil

import polars as pl
import pytest
from typer.testing import CliRunner

from cli import app
from coder.model.folder import read_card, read_config
from coder.assembly import load_model
from coder.pipeline import code_batch

runner = CliRunner()


@pytest.mark.parametrize("command", ["train", "export"], ids=["train", "export"])
def test_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_train_export_predict_end_to_end(trained_model, tmp_path):
    card = read_card(trained_model.folder)  # trained by `coder train` (conftest)
    assert card.dev_metrics["epoch"] == 1 and not trained_model.folder.with_name("model.checkpoint").exists()
    out = tmp_path / "model"
    shutil.copytree(trained_model.folder, out)  # exported again here: the session's folder stays as trained
    exported = runner.invoke(app, ["export", str(out), "--dev-notes", str(trained_model.notes), "--dev-codes",
                                   str(trained_model.codes), "--no-fp16"])
    assert exported.exit_code == 0, exported.output
    card = read_card(out)
    assert card.onnx["fp32"]["parity"]["logits"] <= 1e-4
    assert "int8" in card.onnx and "dev_map" in card.onnx["int8"] and "int8" in read_config(out).onnx_kept
    notes = pl.read_parquet(trained_model.notes)
    coded = code_batch(load_model(out, device="cpu", precision="fp32"), notes, top_k=2)
    assert coded.predictions.height == 2 * 2 * notes.height


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

