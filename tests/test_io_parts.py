import polars as pl
import pytest

from coder.errors import UsageError
from coder.io.parts import PartsFolder
from coder.schema import NOTE_ID, QUARANTINE_SCHEMA

SCHEMA = pl.Schema({NOTE_ID: pl.String, "row": pl.Int64})


def _store(parts: PartsFolder, index: int, ids: list[str]) -> None:
    frame = pl.DataFrame({NOTE_ID: ids, "row": range(len(ids))}, schema=SCHEMA)
    parts.write_batch(index, predictions=frame, quarantine=pl.DataFrame(schema=QUARANTINE_SCHEMA), counts={"n": len(ids)})


def test_resume_returns_finished_batches_only(tmp_path):
    parts = PartsFolder(tmp_path / "out.parquet")
    assert parts.start(fingerprint={"model": "m1"}, resume=False) == {}
    _store(parts, 0, ["a", "b"])
    _store(parts, 1, ["c"])
    (parts.path / "done-000001.json").unlink()  # killed before batch 1 was marked done
    assert PartsFolder(tmp_path / "out.parquet").start(fingerprint={"model": "m1"}, resume=True) == {0: {"n": 2}}


def test_resume_refuses_another_run(tmp_path):
    PartsFolder(tmp_path / "out.parquet").start(fingerprint={"model": "m1", "top_k": 5}, resume=False)
    with pytest.raises(UsageError, match="differs in model; run without --resume"):
        PartsFolder(tmp_path / "out.parquet").start(fingerprint={"model": "m2", "top_k": 5}, resume=True)


def test_start_without_resume_discards_old_parts(tmp_path):
    parts = PartsFolder(tmp_path / "out.parquet")
    parts.start(fingerprint={}, resume=False)
    _store(parts, 0, ["a"])
    assert parts.start(fingerprint={}, resume=False) == {}
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
