"""Atomic output: each batch goes to a parts folder beside the output, then all are combined and renamed.

``OUT.parquet.parts/`` holds ``run.json`` (what the run reads and with which model),
``predictions-NNNNNN.parquet`` and ``quarantine-NNNNNN.parquet`` per batch, and
``done-NNNNNN.json`` (the batch's counts), written last: a batch is finished exactly when
its ``done`` file exists, so a run killed at any moment resumes without repeating or losing notes.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from coder.errors import UsageError
from coder.io.atomic import write_atomically, write_json, write_parquet

log = logging.getLogger(__name__)

_RUN = "run.json"


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


class PartsFolder:
    """The parts of one run, in ``<out>.parts/`` beside the output."""

    def __init__(self, out: Path) -> None:
        self.path = out.with_name(f"{out.name}.parts")

    def _part(self, kind: str, index: int, suffix: str = "parquet") -> Path:
        return self.path / f"{kind}-{index:06d}.{suffix}"

    def start(self, *, fingerprint: Mapping[str, Any], resume: bool) -> dict[int, dict[str, Any]]:
        """Prepare the folder; return the counts of the batches already done (empty unless resuming).

        Resuming refuses when the interrupted run read other inputs or used another model or options.
        """
        run_file = self.path / _RUN
        if resume and run_file.is_file():
            previous = json.loads(run_file.read_text())
            changed = differences(previous, fingerprint)
            if changed:
                raise UsageError(
                    f"cannot resume from {self.path}: the interrupted run differs in {', '.join(changed)}; "
                    "run without --resume to start over"
                )
            done = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in self.path.glob("done-*.json")}
            log.info("resuming: %d batches already done in %s", len(done), self.path)
            return done
        if self.path.exists():
            log.warning("%s: discarding the parts of an earlier run (pass --resume to continue it)", self.path)
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        write_json(run_file, fingerprint)
        return {}

    def write_batch(
        self, index: int, *, predictions: pl.DataFrame, quarantine: pl.DataFrame, counts: Mapping[str, Any]
    ) -> None:
        """Store one finished batch; the ``done`` file goes last and marks it finished.

        A batch without quarantined rows has no quarantine part.
        """
        # parts live minutes: written fast (no compression or statistics)
        write_parquet(self._part("predictions", index), predictions, compression="none", write_statistics=False)
        if not quarantine.is_empty():
            write_parquet(self._part("quarantine", index), quarantine, compression="none", write_statistics=False)
        write_json(self._part("done", index, "json"), counts)

    def combine(self, kind: str, *, schema: pl.Schema, dest: Path, batches: int) -> None:
        """Concatenate the ``kind`` parts of batches ``0..batches-1`` into ``dest``, atomically.

        Parts are streamed one at a time, so memory stays at one part however long the run.
        """
        arrow_schema = pl.DataFrame(schema=schema).to_arrow().schema

        def write(handle) -> None:
            with pq.ParquetWriter(handle, arrow_schema) as writer:
                for index in range(batches):
                    part = self._part(kind, index)
                    if part.exists():
                        writer.write_table(pq.ParquetFile(part).read().cast(arrow_schema))

        write_atomically(dest, write)

    def remove(self) -> None:
        shutil.rmtree(self.path)
