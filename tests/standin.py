"""A stand-in for a loaded model (``coder.assembly.Model``) that the real pipeline runs: PLM-ICD's scores
come from each note's text by a fixed rule, there are no other sources and no rerankers. Tests of the run
mechanics (batches, parts, resume, engines) use it instead of a trained model; ``write_notes`` writes
notes whose bytes need not be valid UTF-8, as a damaged dump has them."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from coder.candidates.features import add_features, merge_candidates
from coder.candidates.stack import CandidateStack
from coder.model.scorer import FRAME_SCHEMA, Scored
from coder.rerank.score import Ranking
from coder.schema import CM, CODE, NOTE_ID, SYSTEM, TEXT, TEXT_ES

CODES = ("R50.9", "J18.9", "I10", "E11.9")


def hash_score(text: str, code: str) -> float:
    """A stable pseudo-score in [0, 1) (Python's hash() of str differs between processes)."""
    return (sum(ord(c) * (i + 1) for i, c in enumerate(text + code)) % 997) / 997


class StandInScorer:
    """Scores ``CODES`` by ``hash_score``; "~" has no tokens; "quiet" gets no codes; "long..." is truncated.

    ``die_on``: the process exits (as a killed worker would) the first time it meets that note id,
    leaving ``marker`` behind; ``fail_on``: raises on that note id, every time; ``fail_at_call``: raises
    KeyboardInterrupt (a kill) on that call."""

    text_column = TEXT
    precision, execution_provider = "fp32", "CPUExecutionProvider"

    def __init__(self, *, die_on=None, fail_on=None, marker=None, fail_at_call=None):
        self.die_on, self.fail_on, self.marker, self.fail_at_call = die_on, fail_on, marker, fail_at_call
        self.calls = 0
        self.seen: list[str] = []

    def score(self, notes: pl.DataFrame, *, top_n: int, above_threshold: bool = False) -> Scored:
        self.calls += 1
        ids = notes.get_column(NOTE_ID).to_list()
        if self.calls == self.fail_at_call:
            raise KeyboardInterrupt
        if self.die_on in ids and not self.marker.exists():
            self.marker.touch()
            os._exit(1)
        if self.fail_on in ids:
            raise RuntimeError(f"stand-in failure on note {self.fail_on}")
        self.seen += ids
        rows = []
        for note_id, text in notes.select(NOTE_ID, TEXT).iter_rows():
            if text in ("~", "quiet"):
                continue
            ranked = sorted(((hash_score(text, code), code) for code in CODES), reverse=True)[:top_n]
            rows += [(note_id, CM, code, score, rank, None, None, None) for rank, (score, code) in enumerate(ranked, start=1)]
        scores = np.array([[hash_score(text, code) for code in CODES] for text in notes[TEXT].to_list()]).reshape(-1, len(CODES))
        return Scored(pl.DataFrame(rows, schema=FRAME_SCHEMA, orient="row"),
                      truncated=tuple(notes.filter(pl.col(TEXT).str.starts_with("long"))[NOTE_ID]),
                      unprocessable=tuple(notes.filter(pl.col(TEXT) == "~")[NOTE_ID]),
                      scores=scores, note_ids=tuple(ids),
                      labels=pl.DataFrame({SYSTEM: [CM] * len(CODES), CODE: list(CODES), "column": range(len(CODES))}))


class StandInModel:
    """What ``coder.pipeline.code_batch`` and the engines use of a ``Model``."""

    def __init__(self, **scorer_options):
        self.scorer = StandInScorer(**scorer_options)
        self.sources = ()
        self.text_columns = (TEXT, TEXT_ES)
        self.stack = CandidateStack(())
        self.ranking = Ranking(rerankers={}, prior=None, label_thresholds=pl.DataFrame(
            {SYSTEM: [CM] * len(CODES), CODE: list(CODES), "threshold": [0.5] * len(CODES)}))
        self.gate = SimpleNamespace(validate=lambda frame: frame.with_columns(pl.lit("release").alias("validity")))
        self.precision, self.execution_provider = "fp32", "CPUExecutionProvider"
        self.hash, self.components = "stand-in-1", {"plm_icd": "1"}
        self.config = SimpleNamespace(name="stand-in", truncations={})
        self.folder, self.code_list = Path("stand-in"), None
        self.ontology = SimpleNamespace(release={CM: "test"})

    def describe(self, code: str, system: str) -> str:
        return f"about {code}"


def byte_strings(values: list[str | bytes | None]) -> pa.Array:
    """A parquet string column that holds ``values`` as given: bytes need not be valid UTF-8
    (``b"\\xff\\xfe"``), which neither polars nor pyarrow would write from Python strings."""
    raw = [value.encode() if isinstance(value, str) else value for value in values]
    offsets = [0]
    for value in raw:
        offsets.append(offsets[-1] + len(value or b""))
    validity = pa.array([value is not None for value in raw]).buffers()[1]
    buffers = [validity, pa.array(offsets, pa.int32()).buffers()[1], pa.py_buffer(b"".join(value or b"" for value in raw))]
    return pa.Array.from_buffers(pa.string(), len(raw), buffers)


def write_notes(path: Path, ids: list, texts: list, **options) -> Path:
    """A notes parquet (note_id, text) from ``byte_strings`` columns; ``options`` go to ``pq.write_table``."""
    pq.write_table(pa.table({NOTE_ID: byte_strings(ids), TEXT: byte_strings(texts)}), path, **options)
    return path


def assemble(frames: dict[str, pl.DataFrame], *, prior: pl.DataFrame) -> pl.DataFrame:
    """Hand-made candidate frames merged with their features, every column of a frame declared by its source
    (``coder.candidates.stack.CandidateStack.features`` for frames without a source object)."""
    merged = merge_candidates(frames, columns=dict.fromkeys(frames, TEXT),
                              features={name: tuple(frame.columns) for name, frame in frames.items()})
    return add_features(merged, prior=prior, sources=tuple(frames))
