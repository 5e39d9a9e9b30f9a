"""What a run prints on stderr: coder's warnings, progress and summary by default; more with -v."""

import logging
import warnings
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from cli import _log_to_stderr, app

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "notes.parquet"


@pytest.fixture(scope="module")
def notes(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("notes") / "notes.parquet"
    pl.read_parquet(EXAMPLES).head(4).write_parquet(path)
    return path


@pytest.mark.parametrize(("flags", "info"), [((), False), (("-v",), True)], ids=["default", "verbose"])
def test_a_run_prints_few_lines_by_default_and_its_info_logs_with_v(tmp_path, tiny_model_path, notes, flags, info):
    result = CliRunner().invoke(app, [*flags, "predict", str(notes), "--out", str(tmp_path / "p.parquet"),
                                      "--model", str(tiny_model_path)])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert any(line.startswith("4 input rows: 4 notes coded") for line in lines)
    assert any(" INFO coder." in line for line in lines) is info
    if not info:
        assert len(lines) <= 5, lines


@pytest.fixture
def stderr_logging():
    def configure(verbosity: int):
        restore = _log_to_stderr(verbosity)
        configured.append(restore)

    configured = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        yield configure
    for restore in configured:
        restore()


def _emit_one_of_each() -> None:
    logging.getLogger("coder.some.step").info("step info")
    logging.getLogger("coder.some.step").warning("step warning")
    logging.getLogger("coder.io.progress").info("3/10 notes")
    logging.getLogger("onnxruntime.somewhere").warning("third-party advice")
    logging.getLogger("somelibrary.module").error("third-party error")  # not torch: importing torch gives its loggers their own handler
    warnings.warn("a deprecated call deep in a library", FutureWarning, stacklevel=1)


@pytest.mark.parametrize(("verbosity", "shown", "hidden"), [
    (0, ["step warning", "3/10 notes", "third-party error"], ["step info", "third-party advice", "deprecated call"]),
    (1, ["step info", "step warning", "3/10 notes", "third-party advice", "third-party error",
         "FutureWarning: a deprecated call"], []),
], ids=["default", "verbose"])
def test_third_party_logs_and_python_warnings_go_through_the_log(stderr_logging, capsys, verbosity, shown, hidden):
    stderr_logging(verbosity)
    _emit_one_of_each()
    err = capsys.readouterr().err
    assert all(text in err for text in shown), err
    assert not any(text in err for text in hidden), err


def test_logging_is_put_back_when_the_command_ends(stderr_logging):
    before = logging.getLogger("coder").level, len(logging.getLogger().handlers), warnings.showwarning
    _log_to_stderr(2)()
    assert (logging.getLogger("coder").level, len(logging.getLogger().handlers), warnings.showwarning) == before
