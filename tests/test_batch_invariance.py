"""A note's output rows are the same whatever else is coded with it: alone, in batches of any size or
order, through the Python API, on worker processes and on Ray (the shipped model, a few short notes)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from cli import app
from coder.api import CodingModel
from coder.errors import ModelBundleError
from coder.model.folder import default_model_path
from coder.assembly import load_model
from coder.pipeline import code_batch
from coder.schema import NOTE_ID, RANK, SYSTEM

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
N_NOTES = 8
TOP_K = 50


@pytest.fixture(scope="module")
def model():
    try:
        return load_model(default_model_path(), device="cpu")
    except ModelBundleError as error:
        pytest.skip(f"shipped model absent: {error}")


@pytest.fixture(scope="module")
def notes() -> pl.DataFrame:
    """The shortest example notes, both text columns (every source of the model runs)."""
    frame = pl.read_parquet(ROOT / "examples" / "notes.parquet")
    return frame.sort(pl.col("text").str.len_chars(), NOTE_ID).head(N_NOTES)


@pytest.fixture(scope="module")
def alone(model, notes) -> pl.DataFrame:
    """Each note coded in a batch of its own."""
    return pl.concat([code_batch(model, notes.slice(i, 1), top_k=TOP_K).predictions for i in range(notes.height)])


def assert_same_rows(found: pl.DataFrame, expected: pl.DataFrame) -> None:
    """Same rows (codes, ranks, above_threshold, evidence), scores within 1e-6, whatever their order."""
    order = [NOTE_ID, SYSTEM, RANK]
    assert_frame_equal(found.sort(order), expected.sort(order), check_exact=False, abs_tol=1e-6, rel_tol=0)


@pytest.mark.parametrize(("batch_size", "reverse"), [(7, False), (7, True), (256, True)], ids=["7", "7-reversed", "256-reversed"])
def test_a_note_gets_the_rows_it_gets_alone_in_any_batch(model, notes, alone, batch_size, reverse):
    frame = notes.reverse() if reverse else notes
    coded = [code_batch(model, frame.slice(start, batch_size), top_k=TOP_K).predictions
             for start in range(0, frame.height, batch_size)]
    assert_same_rows(pl.concat(coded), alone)


def test_the_api_gives_the_rows_of_notes_coded_alone(model, notes, alone):
    coded = CodingModel(model).predict(notes.reverse(), batch_size=3)
    assert coded.quarantine.is_empty()
    assert_same_rows(coded.predictions, alone)


@pytest.mark.parametrize("engine", [["--workers", "2", "--batch-size", "3"], ["--engine", "ray", "--batch-size", "5"]],
                         ids=["processes", "ray"])
def test_engines_write_the_rows_of_notes_coded_alone(notes, alone, tmp_path, engine, request):
    if "ray" in engine:
        request.getfixturevalue("ray_cluster")  # the session's Ray, which the engine joins
    dump, out = tmp_path / "notes.parquet", tmp_path / "out.parquet"
    notes.write_parquet(dump)
    result = CliRunner().invoke(app, ["predict", str(dump), "--out", str(out), "--device", "cpu", "--quiet", *engine])
    assert result.exit_code == 0, result.output
    assert_same_rows(pl.read_parquet(out), alone)
