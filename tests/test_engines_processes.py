"""The processes engine (`coder predict --workers N`) writes exactly what the local engine writes."""

import functools
import logging

import polars as pl
import pytest
from typer.testing import CliRunner

from cli import app
from coder.engines.processes import ProcessesEngine
from coder.errors import ModelBundleError, UsageError, WorkerError
from coder.predict import predict_notes
from coder.run import PredictOptions
from coder.schema import NOTE_ID, TEXT
from engine_cases import CLI_ENGINE_ARGS, OPTIONS, BrokenBundle, assert_same_outputs, run_batches, run_outputs
from standin import StandInModel as StandIn

runner = CliRunner()


def _assert_same_outputs(local, out, *, workers: int) -> None:
    assert assert_same_outputs(local, out, engine="processes")["engine"]["workers"] == workers


def _out(tmp_path):
    out = tmp_path / "processes" / "out.parquet"
    out.parent.mkdir(exist_ok=True)
    return out


def test_workers_write_the_same_rows_as_the_local_engine(tmp_path, dump, local_run):
    out = _out(tmp_path)
    summary = run_batches(dump, out=out, options=OPTIONS, engine=ProcessesEngine(load=StandIn, workers=2))
    _assert_same_outputs(local_run, out, workers=2)
    assert summary.input_rows == 19 == summary.notes_coded + sum(summary.quarantined.values())
    assert not out.with_name("out.parquet.parts").exists()


def test_a_failed_run_resumes_and_loses_no_note(tmp_path, dump, local_run):
    out = _out(tmp_path)
    with pytest.raises(RuntimeError, match="stand-in failure on note g"):
        run_batches(dump, out=out, options=OPTIONS, engine=ProcessesEngine(load=functools.partial(StandIn, fail_on="g"), workers=1))
    resume = PredictOptions(batch_size=2, quiet=True, resume=True)
    summary = run_batches(dump, out=out, options=resume, engine=ProcessesEngine(load=StandIn, workers=2))
    assert 0 < summary.resumed_batches < 10 and summary.notes_coded > 0  # the failed batch is coded on resume
    left = 10 - summary.resumed_batches  # no more workers than batches left
    _assert_same_outputs(local_run, out, workers=min(2, left))


def test_a_workers_coder_error_keeps_its_message_and_exit_code(tmp_path, dump):
    with pytest.raises(WorkerError, match="^ModelBundleError on a worker process: .*lacks coder_model.json") as caught:
        run_batches(dump, out=_out(tmp_path), options=OPTIONS, engine=ProcessesEngine(load=BrokenBundle, workers=1))
    assert caught.value.exit_code == ModelBundleError.exit_code


def test_workers_must_be_positive():
    with pytest.raises(UsageError, match="at least 1"):
        ProcessesEngine(load=StandIn, workers=0)


def test_cli_workers_write_what_the_local_engine_writes(tmp_path, cli_local_run, tiny_model_path):
    out = _out(tmp_path)
    result = runner.invoke(app, ["predict", str(cli_local_run.dump), "--out", str(out), "--model", str(tiny_model_path),
                                 "--workers", "2", *CLI_ENGINE_ARGS])
    assert result.exit_code == 0, result.output
    manifest = assert_same_outputs(cli_local_run.out, out, engine="processes")
    assert manifest["engine"]["workers"] == 2 and manifest["engine"]["threads_per_worker"] >= 1
    local = run_outputs(cli_local_run.out)[2]
    for section in ("model", "ontology", "codes_file"):  # described from the folder, and by the workers
        assert manifest[section] == local[section]


def test_the_driver_loads_no_model_and_records_what_the_workers_ran_on(tmp_path, tiny_model_path, caplog):
    notes = tmp_path / "notes.parquet"
    pl.DataFrame({NOTE_ID: ["a", "b"], TEXT: ["fever", "cough"]}).write_parquet(notes)
    out = _out(tmp_path)
    with caplog.at_level(logging.INFO):
        predict_notes(notes, out=out, model=tiny_model_path, device="cpu", options=PredictOptions(quiet=True), workers=2)
    assert not [record for record in caplog.records if record.name.startswith(("coder.model", "coder.ontology"))]
    model = run_outputs(out)[2]["model"]
    assert (model["execution_provider"], model["precision"]) == ("CPUExecutionProvider", "int8")


def test_cli_workers_with_ray_is_a_usage_error(tmp_path, dump):
    result = runner.invoke(app, ["predict", str(dump), "--out", str(tmp_path / "out.parquet"), "--engine", "ray",
                                 "--workers", "2"])
    assert result.exit_code == 2 and "--workers is for the local engine" in result.output
