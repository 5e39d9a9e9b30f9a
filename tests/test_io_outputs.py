"""Output paths checked before any work, and one run per output (``coder.io.outputs``)."""

import json
import logging
import os
import re
import tempfile
from pathlib import Path

import polars as pl
import pytest

from coder.errors import InputFileError, UsageError
from coder.io.outputs import RunOutputs, check_outputs, claim_outputs, run_lock
from coder.schema import NOTE_ID, TEXT


@pytest.fixture
def notes(tmp_path):
    path = tmp_path / "in" / "notes.parquet"
    path.parent.mkdir()
    pl.DataFrame({NOTE_ID: ["a"], TEXT: ["fever"]}).write_parquet(path)
    return path


@pytest.mark.parametrize(
    ("out", "quarantine", "message"),
    [
        ("in/notes.parquet", None, r"the predictions \(--out\) would overwrite or sit inside an input file .*in/notes.parquet"),
        ("o.parquet", "o.parquet", r"the predictions \(--out\) would overwrite or sit inside the quarantine \(--quarantine\)"),
        ("o.parquet", "o.manifest.json", r"the quarantine \(--quarantine\) would overwrite or sit inside the manifest"),
        ("o.parquet", "in/notes.parquet", r"the quarantine \(--quarantine\) would overwrite or sit inside an input file"),
        ("o.parquet", "o.parquet.parts/q.parquet", r"the quarantine \(--quarantine\) would overwrite or sit inside the parts folder"),
        ("o.parquet", "o.parquet.lock", r"the quarantine \(--quarantine\) would overwrite or sit inside the lock file"),
        ("in/o.parquet", None, r"would overwrite or sit inside the input folder"),
    ],
    ids=["out-is-input", "quarantine-is-out", "quarantine-is-manifest", "quarantine-is-input", "quarantine-in-parts",
         "quarantine-is-lock", "out-in-input-folder"],
)
def test_outputs_that_overwrite_each_other_or_an_input_are_refused(tmp_path, notes, out, quarantine, message):
    outputs = RunOutputs.beside(tmp_path / out, quarantine=tmp_path / quarantine if quarantine else None)
    with pytest.raises(UsageError, match=message):
        check_outputs(outputs, source=notes.parent if out.startswith("in/o") else notes)
    assert notes.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_an_output_that_is_an_input_through_a_link_is_refused(tmp_path, notes):
    (tmp_path / "link.parquet").symlink_to(notes)
    with pytest.raises(UsageError, match="an input file"):
        check_outputs(RunOutputs.beside(tmp_path / "link.parquet"), source=notes)


@pytest.mark.parametrize("where", ["out", "dump"])
def test_a_symbolic_link_loop_is_one_error_naming_it(tmp_path, notes, where):
    loop = tmp_path / "loop.parquet" if where == "out" else notes.parent / "loop.parquet"
    loop.symlink_to(loop)
    error = UsageError if where == "out" else InputFileError
    with pytest.raises(error, match=f"{loop}: (a symbolic link loop|not a file)"):
        check_outputs(RunOutputs.beside(loop if where == "out" else tmp_path / "o.parquet"), source=notes.parent)


@pytest.mark.parametrize(
    ("make", "quarantine", "message"),
    [
        (lambda t: None, "missing/q.parquet", r"missing: not an existing folder, so the quarantine \(--quarantine\) cannot go there"),
        (lambda t: (t / "file").write_text("x"), "file/q.parquet", r"file: not an existing folder"),
        (lambda t: (t / "q.parquet").mkdir(), "q.parquet", r"q.parquet: the quarantine \(--quarantine\) must be a file"),
        (lambda t: (t / "o.parquet.parts").write_text("x"), None, r"o.parquet.parts: the parts folder must be a folder"),
    ],
    ids=["missing-folder", "file-for-folder", "folder-for-file", "file-for-parts-folder"],
)
def test_outputs_that_cannot_be_written_are_refused(tmp_path, notes, make, quarantine, message):
    make(tmp_path)
    with pytest.raises(UsageError, match=message):
        check_outputs(RunOutputs.beside(tmp_path / "o.parquet", quarantine=tmp_path / quarantine if quarantine else None),
                      source=notes)


def test_a_folder_that_refuses_a_new_file_is_found_before_any_work(tmp_path, notes, monkeypatch):
    """Tests run as root, for whom a chmod-ed folder is writable: the probe's failure is simulated."""
    (tmp_path / "read-only").mkdir()
    probe = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if Path(dir).name == "read-only":
            raise PermissionError(13, "Permission denied")
        return probe(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    outputs = RunOutputs.beside(tmp_path / "o.parquet", quarantine=tmp_path / "read-only" / "q.parquet")
    with pytest.raises(UsageError, match=r"read-only: cannot write the quarantine \(--quarantine\) there \(Permission denied\)"):
        check_outputs(outputs, source=notes)


def test_a_second_run_on_the_same_output_is_refused_with_the_holder(tmp_path, notes):
    with claim_outputs(notes, out=tmp_path / "o.parquet") as outputs:
        holder = json.loads(outputs.lock.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] and holder["started"]
        held = rf"o.parquet.lock: another run is writing this output \(pid {os.getpid()} on .*, started {re.escape(holder['started'])}\)"
        with pytest.raises(UsageError, match=held), claim_outputs(notes, out=tmp_path / "o.parquet"):
            pass
        assert outputs.lock.exists()  # the refused run leaves the holder's lock alone
    assert not outputs.lock.exists()


def test_the_lock_is_released_on_an_error(tmp_path, notes):
    with pytest.raises(KeyboardInterrupt), claim_outputs(notes, out=tmp_path / "o.parquet"):
        raise KeyboardInterrupt
    with claim_outputs(notes, out=tmp_path / "o.parquet") as outputs:
        assert outputs.lock.exists()


def test_a_lock_left_by_a_dead_run_is_taken_over(tmp_path, caplog):
    lock = tmp_path / "o.parquet.lock"
    lock.write_text(json.dumps({"pid": 99999999, "host": "gone", "started": "2026-01-01T00:00:00+00:00"}))
    with caplog.at_level(logging.WARNING), run_lock(lock):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert "taking over the lock of a run that ended without releasing it (pid 99999999 on gone, started 2026-01-01" in caplog.text
    assert not lock.exists()
