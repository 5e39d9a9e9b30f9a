"""Atomic output: each batch goes to a parts folder beside the output, then all are combined and renamed.

``OUT.parquet.parts/`` holds ``run.json`` (what the run reads and with which model),
``predictions-NNNNNN.parquet`` and ``quarantine-NNNNNN.parquet`` per batch, and
``done-NNNNNN.json`` (the batch's counts, the rows of each part and what it ran on), written last:
a batch is finished exactly when its ``done`` file exists and its parts read back with the rows it
records. A resume checks every finished batch so, and codes a damaged one again, so a run killed at
any moment, or a part lost or damaged since, resumes without repeating or losing notes.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from coder.errors import CoderError, UsageError
from coder.io.atomic import fsync_folder, write_atomically, write_json, write_parquet

log = logging.getLogger(__name__)

_RUN = "run.json"
_FILE = re.compile(r"(predictions|quarantine|done)-(\d{6})\.(parquet|json)")


def parts_path(out: Path) -> Path:
    """``OUT.parquet`` -> ``OUT.parquet.parts`` beside it."""
    return out.with_name(f"{out.name}.parts")


def differences(previous: Mapping[str, Any], now: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The keys whose values differ, nested mappings compared key by key (``model_components.reranker.x``)."""
    out = []
    for key in sorted({*previous, *now}):
        old, new = previous.get(key), now.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            out += differences(old, new, prefix=f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key}")
    return out


@dataclass(frozen=True)
class Resumed:
    """What ``PartsFolder.start`` found of an interrupted run."""

    done: dict[int, dict[str, Any]]
    """Counts of the finished batches whose files were verified."""
    recomputed: tuple[int, ...] = ()
    """Finished batches whose marker or parts were missing or damaged: their files are removed, the run codes them again."""


class _Damaged(Exception):
    """A finished batch whose files do not hold what its marker records; the message says what."""


class PartsFolder:
    """The parts of one run, in ``<out>.parts/`` beside the output."""

    def __init__(self, out: Path) -> None:
        self.path = parts_path(out)
        self.ran_on: frozenset[str] = frozenset()
        """What the finished batches of a resumed run ran on (``write_batch``'s ``ran_on``): new batches must match."""

    def _part(self, kind: str, index: int, suffix: str = "parquet") -> Path:
        return self.path / f"{kind}-{index:06d}.{suffix}"

    def start(self, *, fingerprint: Mapping[str, Any], resume: bool) -> Resumed:
        """Prepare the folder; return the batches already done (none unless resuming).

        Resuming refuses when the interrupted run read other inputs or used another model or options.
        """
        run_file = self.path / _RUN
        if resume and run_file.is_file():
            try:
                previous = json.loads(run_file.read_text())
            except (OSError, ValueError):
                previous = None
                log.warning("%s: %s is damaged; starting over", self.path, _RUN)
            if isinstance(previous, dict):
                changed = differences(previous, fingerprint)
                if changed:
                    raise UsageError(
                        f"cannot resume from {self.path}: the interrupted run differs in {', '.join(changed)}; "
                        "run without --resume to start over"
                    )
                return self._verified()
        if self.path.exists():
            log.warning("%s: discarding the parts of an earlier run (pass --resume to continue it)", self.path)
            shutil.rmtree(self.path)
        self.path.mkdir()
        fsync_folder(self.path.parent)
        write_json(run_file, fingerprint)
        return Resumed(done={})

    def _verified(self) -> Resumed:
        """The finished batches whose files check out; the files of every other batch are removed."""
        done, recomputed, ran_on = {}, [], set()
        for marker in sorted(self.path.glob("done-*.json")):
            if not (name := _FILE.fullmatch(marker.name)):
                continue
            index = int(name[2])
            try:
                record = self._finished(index)
            except _Damaged as why:
                log.warning("%s: finished batch %d is damaged (%s); coding it again", self.path, index, why)
                recomputed.append(index)
            else:
                done[index] = record["counts"]
                ran_on.add(record["ran_on"])
        for path in self.path.iterdir():
            if (name := _FILE.fullmatch(path.name)) and int(name[2]) not in done:
                path.unlink()
        self.ran_on = frozenset(ran_on)
        log.info("resuming: %d batches already done in %s", len(done), self.path)
        return Resumed(done=done, recomputed=tuple(recomputed))

    def _marker(self, index: int) -> dict[str, Any]:
        """Batch ``index``'s done marker: its counts, the rows of each part it wrote, what it ran on."""
        try:
            record = json.loads(self._part("done", index, "json").read_text())
            if not (isinstance(record["counts"], dict) and isinstance(record["rows"], dict) and isinstance(record["ran_on"], str)):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError):
            raise _Damaged("its done marker is missing or does not parse") from None
        return record

    def _table(self, kind: str, index: int, rows: int) -> pa.Table:
        """Batch ``index``'s ``kind`` part, which must hold ``rows`` rows."""
        part = self._part(kind, index)
        try:
            table = pq.ParquetFile(part).read()
        except FileNotFoundError:
            raise _Damaged(f"{part.name} is missing") from None
        except (pa.ArrowException, OSError):
            raise _Damaged(f"{part.name} is unreadable") from None
        if table.num_rows != rows:
            raise _Damaged(f"{part.name} has {table.num_rows} rows, its marker {rows}")
        return table

    def _finished(self, index: int) -> dict[str, Any]:
        """Batch ``index``'s marker, once every part it lists reads back with its row count."""
        record = self._marker(index)
        for kind, rows in record["rows"].items():
            self._table(kind, index, rows)
        return record

    def write_batch(self, index: int, *, predictions: pl.DataFrame, quarantine: pl.DataFrame, counts: Mapping[str, Any],
                    ran_on: str) -> None:
        """Store one finished batch; the ``done`` file goes last and marks it finished.

        ``ran_on`` (execution provider and precision) must be what the finished batches of a resumed
        run ran on: GPU fp16 and CPU int8 scores never mix in one output. A batch without
        quarantined rows has no quarantine part.
        """
        if self.ran_on and ran_on not in self.ran_on:
            raise UsageError(
                f"cannot resume from {self.path}: its finished batches ran on {', '.join(sorted(self.ran_on))}, "
                f"this run on {ran_on}; resume with the same --device and --precision, or run without --resume to start over"
            )
        parts = {"predictions": predictions, **({"quarantine": quarantine} if not quarantine.is_empty() else {})}
        for kind, frame in parts.items():  # parts live minutes: written fast (no compression or statistics)
            write_parquet(self._part(kind, index), frame, compression="none", write_statistics=False)
        rows = {kind: frame.height for kind, frame in parts.items()}
        write_json(self._part("done", index, "json"), {"counts": dict(counts), "rows": rows, "ran_on": ran_on})

    def combine(self, kind: str, *, schema: pl.Schema, dest: Path, batches: int) -> None:
        """Concatenate the ``kind`` parts of batches ``0..batches-1`` into ``dest``, atomically.

        Each part must hold the rows its batch's marker records; parts are streamed one at a time,
        so memory stays at one part however long the run.
        """
        arrow_schema = pl.DataFrame(schema=schema).to_arrow().schema

        def write(handle) -> None:
            with pq.ParquetWriter(handle, arrow_schema) as writer:
                for index in range(batches):
                    try:
                        rows = self._marker(index)["rows"].get(kind)  # none: the batch wrote no such part
                        if rows is not None:
                            writer.write_table(self._table(kind, index, rows).cast(arrow_schema))
                    except _Damaged as why:
                        raise CoderError(f"{self.path}: batch {index} changed during the run ({why}); "
                                         "rerun with --resume to code it again") from None

        write_atomically(dest, write)

    def remove(self) -> None:
        shutil.rmtree(self.path)
