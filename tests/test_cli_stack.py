from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def _write(folder, tiny_codiesp, *, with_codes: bool = True):
    notes, codes, evidence = tiny_codiesp
    folder.mkdir()
    notes.write_parquet(folder / "notes.parquet")
    evidence.write_parquet(folder / "evidence.parquet")
    if with_codes:
        codes.write_parquet(folder / "codes.parquet")
    return folder


def test_help_names_every_option():
    result = runner.invoke(app, ["stack", "--help"])
    assert result.exit_code == 0
    for option in ("--train", "--out", "--folds", "--codes-file", "--model", "--dev", "--plm-model"):
        assert option in result.output


def test_missing_codes_file_is_one_line_and_exit_3(tiny_codiesp, tmp_path):
    train = _write(tmp_path / "train", tiny_codiesp, with_codes=False)
    result = runner.invoke(app, ["stack", "--train", str(train), "--out", str(tmp_path / "out")])
    assert result.exit_code == 3
    assert "lacks codes.parquet" in result.output


def test_dev_without_plm_model_is_a_usage_error(tiny_codiesp, tmp_path):
    train = _write(tmp_path / "train", tiny_codiesp)
    result = runner.invoke(app, ["stack", "--train", str(train), "--out", str(tmp_path / "out"), "--dev", str(train)])
    assert result.exit_code == 2
    assert "--dev and --plm-model go together" in result.output


@pytest.mark.slow
def test_fits_and_writes_the_stack(tiny_codiesp, tmp_path):
    train = _write(tmp_path / "train", tiny_codiesp)
    out = tmp_path / "out"
    result = runner.invoke(app, ["stack", "--train", str(train), "--out", str(out), "--folds", "2", "--model", "logistic"])
    assert result.exit_code == 0, result.output
    assert "lexicon+ontology+tfidf: thresholds" in result.output
    assert (out / "stack.json").is_file() and (out / "1_candidates" / "lexicon" / "lexicon.json").is_file()
