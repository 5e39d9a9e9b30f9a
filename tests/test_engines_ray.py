"""The Ray engine writes exactly what the local engine writes: same rows, quarantine and counts.

Ray runs locally with 2 CPUs and a small object store, once for the session (``ray_cluster`` in conftest).
"""

import functools
import sys
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
from typer.testing import CliRunner

from cli import app
from coder.errors import MissingDependencyError, ModelBundleError, UsageError, WorkerError
from coder.engines.ray import RayEngine, RayOptions, actor_resources
from coder.predict import predict_notes
from coder.run import PredictOptions
from coder.schema import NOTE_ID
from engine_cases import CLI_ENGINE_ARGS, OPTIONS, BrokenBundle, assert_same_outputs, run_batches, run_outputs
from standin import StandInModel

runner = CliRunner()
StandIn = StandInModel


@pytest.fixture(scope="module")
def ray_session(ray_cluster):
    """The session's Ray (conftest), with this module's stand-ins shipped by value too."""
    ray_cluster.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray_cluster


# Each actor is a fresh process that imports coder: tests that need no two at once take one.
ONE_ACTOR = RayOptions(actors=1)


def _ray_out(tmp_path: Path) -> Path:
    out = tmp_path / "ray" / "out.parquet"
    out.parent.mkdir(exist_ok=True)
    return out


def test_ray_writes_the_same_rows_as_the_local_engine(ray_session, tmp_path, dump, local_run):
    out = _ray_out(tmp_path)
    summary = run_batches(dump, out=out, options=OPTIONS, engine=RayEngine(load=StandIn))
    assert_same_outputs(local_run, out, engine="ray")
    quarantine = pl.read_parquet(out.with_name("out.quarantine.parquet"))
    assert quarantine.filter(pl.col("reason") == "duplicate_note_id").select(NOTE_ID, "row").rows() == [
        ("b", 5), ("a", 0), ("k", 4), ("l", 6)
    ]
    assert quarantine.filter(pl.col("reason") == "invalid_utf8").select(NOTE_ID, "row").rows() == [(None, 7), ("m", 8)]
    assert summary.input_rows == 19 == summary.notes_coded + sum(summary.quarantined.values())
    assert not out.with_name("out.parquet.parts").exists()


def test_a_killed_worker_loses_and_repeats_no_note(ray_session, tmp_path, dump, local_run):
    marker = tmp_path / "died"
    executor = RayEngine(load=functools.partial(StandIn, die_on="g", marker=marker), ray=ONE_ACTOR)
    out = _ray_out(tmp_path)
    run_batches(dump, out=out, options=OPTIONS, engine=executor)
    assert marker.exists()  # the worker did die once
    assert_same_outputs(local_run, out, engine="ray")


def test_resume_continues_a_failed_ray_run(ray_session, tmp_path, dump, local_run):
    out = _ray_out(tmp_path)
    failing = RayEngine(load=functools.partial(StandIn, fail_on="g"), ray=ONE_ACTOR)
    with pytest.raises(Exception, match="stand-in failure on note g"):
        run_batches(dump, out=out, options=OPTIONS, engine=failing)
    parts = out.with_name("out.parquet.parts")
    done_before = len(list(parts.glob("done-*.json")))
    assert 0 < done_before < 8
    resume = PredictOptions(batch_size=2, quiet=True, resume=True)
    summary = run_batches(dump, out=out, options=resume, engine=RayEngine(load=StandIn, ray=ONE_ACTOR))
    assert summary.resumed_batches == done_before
    assert_same_outputs(local_run, out, engine="ray")


def test_ray_resumes_a_local_run(ray_session, tmp_path, dump, local_run):
    out = _ray_out(tmp_path)
    with pytest.raises(RuntimeError, match="stand-in failure"):
        run_batches(dump, model=StandIn(fail_on="e"), out=out, options=OPTIONS)
    resume = PredictOptions(batch_size=2, quiet=True, resume=True)
    summary = run_batches(dump, out=out, options=resume, engine=RayEngine(load=StandIn, ray=ONE_ACTOR))
    assert summary.resumed_batches == 5
    assert_same_outputs(local_run, out, engine="ray")
    assert run_outputs(out)[2]["timing"]["notes_this_run"] == 9


@pytest.mark.parametrize(
    "options",
    [{"actors": 0}, {"cpus_per_actor": 0}, {"gpus_per_actor": -1}, {"max_restarts": -1}],
    ids=["actors", "cpus", "gpus", "restarts"],
)
def test_bad_ray_options_are_refused(options):
    with pytest.raises(UsageError, match="Ray options out of range"):
        RayOptions(**options)


def test_predict_notes_on_ray_without_ray_names_the_pip_line(monkeypatch, tmp_path, dump):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError, match=r"--engine ray needs .*pip install 'ray\[data\]==2\.60\.0'"):
        predict_notes(dump, out=tmp_path / "out.parquet", model=tmp_path, ray=RayOptions())


def test_cli_lists_the_engine_options():
    result = runner.invoke(app, ["predict", "--help"])
    assert result.exit_code == 0
    assert "--engine" in result.output and "--ray-address" in result.output


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["--ray-address", "auto"], 2, "--ray-address needs --engine ray"),
        (["--engine", "ray"], 7, "pip install 'ray[data]==2.60.0'"),
    ],
    ids=["address-without-ray", "ray-missing"],
)
def test_cli_engine_errors(monkeypatch, tmp_path, dump, args, exit_code, message):
    monkeypatch.setitem(sys.modules, "ray", None)
    result = runner.invoke(app, ["predict", str(dump), "--out", str(tmp_path / "out.parquet"), *args])
    assert result.exit_code == exit_code
    assert message in result.output


def test_cli_ray_engine_writes_what_the_local_engine_writes(ray_session, tmp_path, cli_local_run, tiny_model_path):
    out = _ray_out(tmp_path)
    result = runner.invoke(app, ["predict", str(cli_local_run.dump), "--out", str(out), "--model", str(tiny_model_path),
                                 "--engine", "ray", *CLI_ENGINE_ARGS])
    assert result.exit_code == 0, result.output
    assert_same_outputs(cli_local_run.out, out, engine="ray")
    manifest = run_outputs(out)[2]
    assert manifest["model"]["execution_provider"] == "CPUExecutionProvider"
    assert manifest["engine"]["actors"] == 2


class BadLabels(StandIn):
    def __init__(self):
        super().__init__()

        def score(notes, **options):
            raise ModelBundleError("label count differs from the ONNX output width")

        self.scorer.score = score


@pytest.mark.parametrize(
    ("load", "message"),
    [(BrokenBundle, "lacks coder_model.json"), (BadLabels, "label count differs")],
    ids=["load", "predict"],
)
def test_a_workers_coder_error_keeps_its_message_and_exit_code(ray_session, tmp_path, dump, load, message):
    with pytest.raises(WorkerError, match=f"^ModelBundleError on a Ray worker: .*{message}") as caught:
        run_batches(dump, out=_ray_out(tmp_path), options=OPTIONS, engine=RayEngine(load=load, ray=ONE_ACTOR))
    assert caught.value.exit_code == ModelBundleError.exit_code


@pytest.mark.parametrize(
    ("cluster", "options", "pending", "expected"),
    [
        ({"CPU": 16.0, "GPU": 4.0}, RayOptions(), 100, (4, 1.0, 1.0)),
        ({"CPU": 16.0, "GPU": 4.0}, RayOptions(gpus_per_actor=0.5), 100, (8, 1.0, 0.5)),
        ({"CPU": 2.0}, RayOptions(), 100, (2, 1.0, 0.0)),
        ({"CPU": 8.0}, RayOptions(cpus_per_actor=2), 100, (4, 2.0, 0.0)),
        ({"CPU": 8.0}, RayOptions(actors=3), 100, (3, 1.0, 0.0)),
        ({"CPU": 16.0, "GPU": 4.0}, RayOptions(), 2, (2, 1.0, 1.0)),
        ({"CPU": 2.0, "GPU": 4.0}, RayOptions(), 100, (2, 1.0, 1.0)),
    ],
    ids=["one-per-gpu", "half-gpus", "cpu-only", "two-cpus-each", "actors-given", "fewer-batches", "cpus-bind"],
)
def test_actor_resources_follow_the_cluster(cluster, options, pending, expected):
    fake_ray = SimpleNamespace(cluster_resources=lambda: cluster)
    assert actor_resources(fake_ray, options, pending=pending) == expected


def test_nothing_to_score_needs_no_cluster(monkeypatch, tmp_path, dump, local_run):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    out = _ray_out(tmp_path)
    monkeypatch.setattr("coder.run.write_json", killed)  # killed after the last batch, before the manifest
    with pytest.raises(KeyboardInterrupt):
        run_batches(dump, out=out, options=OPTIONS)
    monkeypatch.undo()
    monkeypatch.setattr("coder.engines.ray._connected", None)  # any use of a cluster would fail
    resume = PredictOptions(batch_size=2, quiet=True, resume=True)
    summary = run_batches(dump, out=out, options=resume, engine=RayEngine(load=StandIn))
    assert summary.resumed_batches == 10
    assert_same_outputs(local_run, out, engine="ray")
    assert run_outputs(out)[2]["engine"] == {"name": "ray"}
