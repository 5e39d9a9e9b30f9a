import logging

import polars as pl
import pytest

from coder.errors import CoderError, UsageError
from coder.io.parts import PartsFolder
from coder.schema import NOTE_ID, QUARANTINE_SCHEMA

SCHEMA = pl.Schema({NOTE_ID: pl.String, "row": pl.Int64})
CPU = "CPUExecutionProvider int8"


def _store(parts: PartsFolder, index: int, ids: list[str], *, quarantined: int = 0, ran_on: str = CPU) -> None:
    frame = pl.DataFrame({NOTE_ID: ids, "row": range(len(ids))}, schema=SCHEMA)
    quarantine = pl.DataFrame({NOTE_ID: ["q"] * quarantined, "row": [0] * quarantined, "file": ["f"] * quarantined,
                               "reason": ["null_text"] * quarantined}, schema=QUARANTINE_SCHEMA)
    parts.write_batch(index, predictions=frame, quarantine=quarantine, counts={"n": len(ids)}, ran_on=ran_on)


def test_resume_returns_finished_batches_only(tmp_path):
    parts = PartsFolder(tmp_path / "out.parquet")
    assert parts.start(fingerprint={"model": "m1"}, resume=False).done == {}
    _store(parts, 0, ["a", "b"])
    _store(parts, 1, ["c"])
    (parts.path / "done-000001.json").unlink()  # killed before batch 1 was marked done
    resumed = PartsFolder(tmp_path / "out.parquet").start(fingerprint={"model": "m1"}, resume=True)
    assert (resumed.done, resumed.recomputed) == ({0: {"n": 2}}, ())
    assert not (parts.path / "predictions-000001.parquet").exists()  # the unfinished batch's part is gone


def test_resume_verifies_every_part_a_marker_lists(tmp_path, caplog):
    parts = PartsFolder(tmp_path / "out.parquet")
    parts.start(fingerprint={}, resume=False)
    _store(parts, 0, ["a"], quarantined=2)
    _store(parts, 1, ["b"])
    _store(parts, 2, ["c"], quarantined=1)
    (parts.path / "quarantine-000000.parquet").unlink()
    (parts.path / "predictions-000002.parquet").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        resumed = PartsFolder(tmp_path / "out.parquet").start(fingerprint={}, resume=True)
    assert (resumed.done, resumed.recomputed) == ({1: {"n": 1}}, (0, 2))
    assert "finished batch 0 is damaged (quarantine-000000.parquet is missing)" in caplog.text
    assert "finished batch 2 is damaged (predictions-000002.parquet is unreadable)" in caplog.text
    assert sorted(p.name for p in parts.path.iterdir()) == ["done-000001.json", "predictions-000001.parquet", "run.json"]


def test_a_damaged_run_file_starts_over(tmp_path, caplog):
    parts = PartsFolder(tmp_path / "out.parquet")
    parts.start(fingerprint={"model": "m1"}, resume=False)
    _store(parts, 0, ["a"])
    (parts.path / "run.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert PartsFolder(tmp_path / "out.parquet").start(fingerprint={"model": "m1"}, resume=True).done == {}
    assert "run.json is damaged; starting over" in caplog.text
    assert not list(parts.path.glob("done-*"))


def test_resume_refuses_another_run(tmp_path):
    PartsFolder(tmp_path / "out.parquet").start(fingerprint={"model": "m1", "top_k": 5}, resume=False)
    with pytest.raises(UsageError, match="differs in model; run without --resume"):
        PartsFolder(tmp_path / "out.parquet").start(fingerprint={"model": "m2", "top_k": 5}, resume=True)


def test_a_resumed_run_refuses_batches_on_another_device(tmp_path):
    parts = PartsFolder(tmp_path / "out.parquet")
    parts.start(fingerprint={}, resume=False)
    _store(parts, 0, ["a"])
    resumed = PartsFolder(tmp_path / "out.parquet")
    resumed.start(fingerprint={}, resume=True)
    with pytest.raises(UsageError, match="ran on CPUExecutionProvider int8, this run on CUDAExecutionProvider fp16"):
        _store(resumed, 1, ["b"], ran_on="CUDAExecutionProvider fp16")
    assert not (parts.path / "predictions-000001.parquet").exists()  # refused before anything is written


def test_start_without_resume_discards_old_parts(tmp_path):
    parts = PartsFolder(tmp_path / "out.parquet")
    parts.start(fingerprint={}, resume=False)
    _store(parts, 0, ["a"])
    assert parts.start(fingerprint={}, resume=False).done == {}
    assert not list(parts.path.glob("done-*"))


def test_combine_streams_parts_in_order_and_writes_schema_when_empty(tmp_path):
    parts = PartsFolder(tmp_path / "out.parquet")
    parts.start(fingerprint={}, resume=False)
    _store(parts, 0, ["a", "b"])
    _store(parts, 1, ["c"])
    parts.combine("predictions", schema=SCHEMA, dest=tmp_path / "out.parquet", batches=2)
    assert pl.read_parquet(tmp_path / "out.parquet").get_column(NOTE_ID).to_list() == ["a", "b", "c"]
    parts.combine("predictions", schema=SCHEMA, dest=tmp_path / "empty.parquet", batches=0)
    assert pl.read_parquet(tmp_path / "empty.parquet").schema == SCHEMA
    assert not list(tmp_path.glob(".*.tmp"))


def test_combine_refuses_a_part_lost_during_the_run(tmp_path):
    parts = PartsFolder(tmp_path / "out.parquet")
    parts.start(fingerprint={}, resume=False)
    _store(parts, 0, ["a"])
    _store(parts, 1, ["b"])
    (parts.path / "predictions-000001.parquet").unlink()
    with pytest.raises(CoderError, match=r"batch 1 changed during the run \(predictions-000001.parquet is missing\); rerun with --resume"):
        parts.combine("predictions", schema=SCHEMA, dest=tmp_path / "out.parquet", batches=2)
    assert not (tmp_path / "out.parquet").exists()
