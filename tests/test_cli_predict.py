"""`coder predict` end to end with the tiny model bundle (tests/assets/tiny_model)."""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from cli import app
from coder.io.parts import PartsFolder
from coder.schema import NOTE_ID, PREDICTION_SCHEMA, QUARANTINE_SCHEMA, TEXT, QuarantineReason

TINY_MODEL = Path(__file__).resolve().parent / "assets" / "tiny_model" / "bundle" / "coder_model.json"
pytestmark = pytest.mark.skipif(not TINY_MODEL.exists(), reason="the tiny model bundle has not landed yet")

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "notes.parquet"
SECRET = "Zyxwvut-patient-words"


def _predict(*args: str):
    return runner.invoke(app, ["predict", *args])


def test_help_lists_the_options():
    result = _predict("--help")
    assert result.exit_code == 0
    for option in ("--out", "--model", "--top-k", "--threshold-only", "--quarantine", "--resume", "--quiet", "--device", "--precision",
                   "--max-note-chars"):
        assert option in result.output


def test_happy_path_writes_predictions_quarantine_and_manifest(tmp_path, tiny_model_path):
    notes = tmp_path / "notes.parquet"
    source = pl.read_parquet(EXAMPLES).head(6).with_columns(pl.format("{} {}", pl.lit(SECRET), TEXT).alias(TEXT))
    extra = pl.DataFrame({NOTE_ID: ["blank", source[0, NOTE_ID]], TEXT: ["   ", f"{SECRET} again"], "text_es": [None, None]})
    pl.concat([source, extra]).write_parquet(notes)
    out = tmp_path / "out.parquet"
    result = runner.invoke(app, ["--verbose", "predict", str(notes), "--out", str(out), "--model", str(tiny_model_path), "--top-k", "5"])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    predictions = pl.read_parquet(out)
    assert predictions.schema == PREDICTION_SCHEMA
    assert predictions.group_by(NOTE_ID, "system").len().get_column("len").max() <= 5
    quarantine = pl.read_parquet(tmp_path / "out.quarantine.parquet")
    assert quarantine.schema == QUARANTINE_SCHEMA
    assert sorted(quarantine.get_column("reason")) == [QuarantineReason.DUPLICATE_NOTE_ID, QuarantineReason.EMPTY_TEXT]
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    assert manifest["counts"]["input_rows"] == 8 == manifest["counts"]["notes_coded"] + 2
    assert manifest["model"]["hash"] and manifest["model"]["execution_provider"]
    assert manifest["model"]["precision"] == "int8"  # auto on CPU: the tiny bundle keeps its int8 variant
    assert manifest["ontology"]["ICD-10-CM"]
    assert "8 input rows: 6 notes coded" in result.output


@pytest.mark.parametrize("empty", ["file", "folder"])
def test_a_dump_without_notes_exits_3_with_one_line(tmp_path, tiny_model_path, empty):
    notes = tmp_path / "dump"
    notes.mkdir()
    if empty == "file":
        notes = notes / "empty.parquet"
        pl.DataFrame(schema={NOTE_ID: pl.String, TEXT: pl.String}).write_parquet(notes)
    result = _predict(str(notes), "--out", str(tmp_path / "out.parquet"), "--model", str(tiny_model_path), "-q")
    assert result.exit_code == 3
    assert result.output.startswith(f"error: {notes}: no input notes") and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such file or directory"),
        (lambda p: p.write_text("note_id,text\n"), "not a readable parquet file"),
        (lambda p: pl.DataFrame({NOTE_ID: ["n1"], "body": ["x"]}).write_parquet(p), "missing text column 'text'"),
        (lambda p: pl.DataFrame({NOTE_ID: [1], TEXT: ["x"]}).write_parquet(p), "id column 'note_id' is int64"),
        (lambda p: pl.DataFrame({"NOTE_ID": ["n1"], "Text": ["x"]}).write_parquet(p), "missing id column 'note_id'"),
    ],
    ids=["missing", "not-parquet", "missing-column", "numeric-id", "other-case-columns"],
)
def test_bad_files_exit_3_with_one_line_before_the_model_loads(tmp_path, tiny_model_path, monkeypatch, make, message):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("coder.predict.load_model", never)
    notes = tmp_path / "notes.parquet"
    make(notes)
    result = _predict(str(notes), "--out", str(tmp_path / "out.parquet"), "--model", str(tiny_model_path))
    assert result.exit_code == 3
    assert f"{notes}: {message}" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_second_run_is_refused_and_a_killed_run_resumes_without_losing_or_repeating_notes(tmp_path, tiny_model_path, caplog):
    source = pl.read_parquet(tiny_model_path.parent / "data" / "notes.parquet")  # short synthetic notes
    notes = tmp_path / "notes.parquet"
    rows = pl.int_range(0, 300, eager=True)
    source[(rows % source.height).to_list()].with_columns(pl.format("k{}", rows).alias(NOTE_ID)).write_parquet(notes)
    out = tmp_path / "out.parquet"
    args = ["predict", str(notes), "--out", str(out), "--model", str(tiny_model_path), "--batch-size", "2", "--device", "cpu", "-q"]
    coder = str(Path(sys.executable).with_name("coder"))
    process = subprocess.Popen([coder, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = tmp_path / "out.parquet.lock"
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.stat().st_size) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    # An overlapping cron job on the same --out, while the first run loads its model: refused before any work.
    second = subprocess.run([coder, *args], capture_output=True, text=True, timeout=120, check=False)
    assert second.returncode == 2
    assert second.stderr.startswith(f"error: {lock}: another run is writing this output (pid {process.pid} on ")
    assert len(second.stderr.strip().splitlines()) == 1
    parts = tmp_path / "out.parquet.parts"
    while len(list(parts.glob("done-*.json"))) < 5 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists()
    finished = len(list(parts.glob("done-*.json")))
    assert 5 <= finished < 150

    with caplog.at_level(logging.WARNING):
        resumed = runner.invoke(app, [*args, "--resume"])  # in this process: one interpreter start less
    assert resumed.exit_code == 0, resumed.output
    assert f"taking over the lock of a run that ended without releasing it (pid {process.pid} on " in caplog.text
    assert not (tmp_path / "out.parquet.lock").exists()
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    assert manifest["timing"]["resumed_batches"] >= finished
    assert manifest["timing"]["notes_this_run"] <= 300 - 2 * finished
    assert manifest["counts"]["input_rows"] == 300 == manifest["counts"]["notes_coded"]
    predictions = pl.read_parquet(out)
    assert predictions.select(NOTE_ID, "system", "code").is_duplicated().sum() == 0
    assert predictions.select(NOTE_ID, "system", "rank").is_duplicated().sum() == 0
    assert predictions.get_column(NOTE_ID).n_unique() == 300 - manifest["counts"]["notes_without_codes"]
    assert not parts.exists()


def test_precision_chooses_the_onnx_variant(tmp_path, tiny_model_path):
    out = tmp_path / "out.parquet"
    result = _predict(str(EXAMPLES), "--out", str(out), "--model", str(tiny_model_path), "--precision", "fp32", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out.manifest.json").read_text())["model"]["precision"] == "fp32"


def test_resume_refuses_another_model_setting(tmp_path, tiny_model_path):
    out = tmp_path / "out.parquet"
    PartsFolder(out).start(fingerprint={"model_hash": "another"}, resume=False)
    result = _predict(str(EXAMPLES), "--out", str(out), "--model", str(tiny_model_path), "--resume")
    assert result.exit_code == 2
    assert "cannot resume" in result.output and "model_hash" in result.output
    assert len(result.output.strip().splitlines()) == 1


BASE = ["{notes}", "--out", "{out}", "--model", "{model}"]


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["{notes}", "--model", "{model}"], 2, "Missing option '--out'"),
        ([*BASE, "--top-k", "0"], 2, "Invalid value for '--top-k'"),
        ([*BASE, "--top-k", "many"], 2, "Invalid value for '--top-k'"),
        ([*BASE, "--batch-size", "0"], 2, "Invalid value for '--batch-size'"),
        ([*BASE, "--max-note-chars", "0"], 2, "Invalid value for '--max-note-chars'"),
        ([*BASE, "--device", "tpu"], 2, "Invalid value for '--device'"),
        ([*BASE, "--precision", "int4"], 2, "Invalid value for '--precision'"),
        ([*BASE, "--engine", "spark"], 2, "Invalid value for '--engine'"),
        ([*BASE, "--llm-weight", "2"], 2, "Invalid value for '--llm-weight'"),
        ([*BASE, "--no-such-option"], 2, "No such option"),
        ([*BASE, "--codes-file", "{tmp}/missing.tsv"], 2, "Invalid value for '--codes-file'"),
        ([*BASE, "--llm-option", "colour=blue"], 2, "--llm-option 'colour=blue': expected KEY=VALUE"),
        ([*BASE, "--llm-option", "weight=heavy"], 2, "--llm-option 'weight=heavy': weight takes a float"),
        ([*BASE, "--ray-address", "auto"], 2, "--ray-address needs --engine ray"),
        ([*BASE, "--model", "{tmp}/missing"], 5, "is not a coder model folder"),
        (["{tmp}/missing.parquet", "--out", "{out}", "--model", "{model}"], 3, "missing.parquet: no such file or directory"),
        ([*BASE, "--id-column", "text"], 2, "the id column and the text column are both 'text'"),
        ([*BASE, "--id-column", "id", "--text-column", "id"], 2, "the id column and the text column are both 'id'"),
        ([*BASE, "--text-column", "body"], 3, "missing text column 'body'"),
        ([*BASE, "--id-column", "id"], 3, "missing id column 'id'"),
        ([*BASE, "--text-column", "code"], 3, "text column 'code' is int64, expected a string column"),
        ([*BASE, "--out", "{notes}"], 2, "the predictions (--out) would overwrite or sit inside an input file"),
        ([*BASE, "--quarantine", "{out}"], 2, "would overwrite or sit inside the quarantine (--quarantine)"),
        ([*BASE, "--quarantine", "{notes}", "--model", "{tmp}/missing"], 2, "the quarantine (--quarantine) would overwrite"),
        ([*BASE, "--quarantine", "{tmp}/missing/q.parquet"], 2, "not an existing folder"),
    ],
    ids=["no-out", "top-k-0", "top-k-word", "batch-size-0", "max-note-chars-0", "device", "precision", "engine", "llm-weight", "unknown-option",
         "codes-file-missing", "llm-option-key", "llm-option-value", "ray-address", "model-missing", "input-missing",
         "id-is-text", "id-is-text-column", "text-column-missing", "id-column-missing", "text-column-not-string",
         "out-is-input", "quarantine-is-out", "outputs-before-model", "quarantine-folder-missing"],
)
def test_every_option_mistake_is_one_line_and_an_exit_code(tmp_path, tiny_model_path, args, exit_code, message):
    notes = tmp_path / "notes.parquet"
    pl.DataFrame({NOTE_ID: ["n1"], TEXT: ["fever"], "code": [3]}).write_parquet(notes)
    paths = {"notes": notes, "out": tmp_path / "out.parquet", "model": tiny_model_path, "tmp": tmp_path}
    result = runner.invoke(app, ["predict", *(arg.format(**paths) for arg in args)])
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.parquet"]  # nothing written, no parts left behind


def _full_disk(path, mode="r", *args, **kwargs):
    if Path(path).name.startswith(".predictions-"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return open(path, mode, *args, **kwargs)


@pytest.mark.parametrize(("make", "exit_code", "message"), [
    (lambda notes, monkeypatch: (notes / "loop.parquet").symlink_to(notes / "loop.parquet"), 3,
     "loop.parquet: not a file (a broken symbolic link or a link loop)"),
    (lambda notes, monkeypatch: monkeypatch.setattr("coder.io.atomic.open", _full_disk, raising=False), 9,
     "predictions-000000.parquet: cannot write it (No space left on device)"),
], ids=["symlink-loop-in-dump", "disk-full"])
def test_an_operational_failure_is_one_line_and_its_exit_code(tmp_path, tiny_model_path, monkeypatch, make, exit_code, message):
    notes = tmp_path / "dump"
    notes.mkdir()
    pl.read_parquet(EXAMPLES).head(2).write_parquet(notes / "notes.parquet")
    make(notes, monkeypatch)
    result = _predict(str(notes), "--out", str(tmp_path / "out.parquet"), "--model", str(tiny_model_path), "-q")
    assert result.exit_code == exit_code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not (tmp_path / "out.parquet").exists()
