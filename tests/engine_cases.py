"""What the engine tests share: a dump with every kind of bad row, a run with the stand-in model, and a
run's outputs compared with a local run's."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

import coder.run
from coder.engines.local import LocalEngine
from coder.errors import ModelBundleError
from coder.io.outputs import claim_outputs
from coder.run import ModelRecord, PredictOptions
from coder.schema import NOTE_ID, TEXT
from standin import StandInModel, write_notes

OPTIONS = PredictOptions(batch_size=2, quiet=True)
CLI_ENGINE_ARGS = ("--batch-size", "3", "--device", "cpu", "--quiet")
"""What every engine's `coder predict` run of the tiny model is given besides its engine (``cli_local_run``)."""


def run_batches(source, *, out, options, engine=None, model=None):
    """A run described by a stand-in model, which codes the batches unless another ``engine``'s workers do."""
    with claim_outputs(source, out=out, quarantine=options.quarantine) as outputs:
        model = model or StandInModel()
        plan = coder.run.plan_run(source, text_columns=model.text_columns, options=options)
        return coder.run.run_batches(plan, model=ModelRecord.of(model), outputs=outputs, options=options,
                                     engine=engine or LocalEngine(model))


def write_dump(folder: Path) -> Path:
    """Two files, several row groups, and every kind of bad row: null and blank text, null id, duplicate ids (one
    only once trimmed), an id and a text that are not valid UTF-8."""
    folder.mkdir()
    first = {
        NOTE_ID: ["a", "b", None, "c", "d", "b", "h", "i", "j", "k"],
        TEXT: ["fever", "cough and fever", "x", "  ", "~", "again", "pain", None, "rash", "dyspnoea"],
    }
    pl.DataFrame(first).write_parquet(folder / "1.parquet", row_group_size=3)
    write_notes(folder / "2.parquet", ["a", "e", "f", "g", "k", "l", " l ", b"\xff", "m"],
                ["dup", "chest pain", None, "cough", "dup", "headache", "again", "x", b"\xfe"], row_group_size=4)
    return folder


def run_outputs(out: Path) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """A run's predictions, quarantine and manifest."""
    manifest = json.loads(out.with_name(f"{out.stem}.manifest.json").read_text())
    return pl.read_parquet(out), pl.read_parquet(out.with_name(f"{out.stem}.quarantine.parquet")), manifest


def assert_same_outputs(local: Path, other: Path, *, engine: str) -> dict:
    """``other`` (a run on ``engine``) wrote what the local run ``local`` wrote; returns its manifest."""
    local_predictions, local_quarantine, local_manifest = run_outputs(local)
    predictions, quarantine, manifest = run_outputs(other)
    assert_frame_equal(predictions, local_predictions, check_exact=False, abs_tol=1e-6, rel_tol=0)
    assert_frame_equal(quarantine, local_quarantine)
    assert manifest["counts"] == local_manifest["counts"]
    assert manifest["engine"]["name"] == engine
    return manifest


class BrokenBundle(StandInModel):
    def __init__(self):
        raise ModelBundleError("model folder lacks coder_model.json")
