"""Chunk and score: PLM-ICD on onnxruntime, notes in, its best codes per note and system out.

The output is the ``plm_icd`` candidate frame (score, rank within note and system, evidence at
the label's attention peak), which the pipeline merges with the other sources' frames.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl

from coder.errors import ModelBundleError, UsageError
from coder.model.chunking import NO_OFFSET, ChunkedNote, chunk_notes, score_in_batches
from coder.model.folder import ONNX_FILES, ModelConfig, load_tokenizer
from coder.model.session import CPU_PROVIDER, create_session, gpu_present, onnx_forward, output_width
from coder.schema import CODE, EVIDENCE_COLUMNS, NOTE_ID, PLM_ICD, SYSTEM, TEXT

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "int8", "fp16")
# Notes per forward pass: one, so that a note's scores depend on the note alone. The int8 model
# quantises its activations with one scale per call (DynamicQuantizeLinear), and a GPU's kernels
# may sum in another order at another batch shape: with several notes a pass, a note's scores moved
# with the notes beside it and with their padding.
NOTES_PER_PASS = 1
FRAME_SCHEMA = pl.Schema({NOTE_ID: pl.String, SYSTEM: pl.String, CODE: pl.String, PLM_ICD: pl.Float64,
                          f"{PLM_ICD}_rank": pl.Int32, **EVIDENCE_COLUMNS})


@dataclass(frozen=True)
class Scored:
    """PLM-ICD's candidates for a batch, the notes that needed special handling, and every label's
    score, with which it backfills the other sources' codes (``coder.candidates.backfill``)."""

    candidates: pl.DataFrame
    """FRAME_SCHEMA rows: per note and system the best codes by score."""
    truncated: tuple[str, ...]
    """Note ids whose text exceeded the chunks kept (scored on their beginning)."""
    unprocessable: tuple[str, ...]
    """Note ids with no tokens (no candidates; the run quarantines them)."""
    scores: np.ndarray
    """[n_notes, n_labels] every label's score, notes in the order of ``note_ids``."""
    note_ids: tuple[str, ...]
    labels: pl.DataFrame
    """(system, code, column): the label of each column of ``scores``."""
    text_column: str = TEXT
    """The note column scored (evidence offsets point into it)."""
    name: ClassVar[str] = PLM_ICD
    backfill: ClassVar[bool] = True

    def get_feature_names_out(self) -> tuple[str, ...]:
        """The columns of the frame the rerankers may read, as a candidate source declares them."""
        return (PLM_ICD, f"{PLM_ICD}_rank", f"{PLM_ICD}_all")

    def score(self, notes: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
        """``plm_icd`` of each (note_id, system, code) of ``keys`` whose code is a label and whose
        note was scored (the backfill's interface; ``notes`` is not read again)."""
        rows = {note_id: i for i, note_id in enumerate(self.note_ids)}
        found = (keys.join(self.labels, on=[SYSTEM, CODE], how="inner")
                 .with_columns(pl.col(NOTE_ID).replace_strict(rows, default=None, return_dtype=pl.Int64).alias("_row"))
                 .drop_nulls("_row"))
        values = self.scores[found["_row"].to_numpy(), found["column"].to_numpy()].astype(np.float64)
        return found.select(NOTE_ID, SYSTEM, CODE).with_columns(pl.Series(PLM_ICD, values))


class PlmIcdScorer:
    """PLM-ICD of a model folder on an onnxruntime session; build with ``load_scorer``."""

    def __init__(self, *, config: ModelConfig, session, tokenizer, precision: str):
        self.config = config
        self.session = session
        self.tokenizer = tokenizer
        self.precision = precision
        self.text_column: str = config.text_columns["encoder"]
        self.execution_provider: str = session.get_providers()[0]
        self._codes = np.array([label.code for label in config.labels], dtype=object)
        self._thresholds = np.asarray(config.thresholds, dtype=np.float32)
        systems = np.asarray(config.systems)
        # each system's label columns by code: a stable sort of their scores then breaks ties by code,
        # the tie rule of every rank (coder.rank)
        self._systems = {system: (cols := np.flatnonzero(systems == system))[np.argsort(self._codes[cols], kind="stable")]
                         for system in dict.fromkeys(config.systems)}
        self._labels = pl.DataFrame({SYSTEM: list(config.systems), CODE: self._codes.tolist(),
                                     "column": np.arange(len(self._codes))})

    def score(self, notes: pl.DataFrame, *, top_n: int, above_threshold: bool = False) -> Scored:
        """The ``top_n`` codes per note and system (and, with ``above_threshold``, every code at or
        above its label threshold as well). ``notes``: note_id and the encoder's text column. Each
        note is scored in a forward pass of its own: the same note gets the same scores in any batch."""
        if self.text_column not in notes.columns:
            raise UsageError(f"notes lack column {self.text_column!r}, which model {self.config.name} reads")
        note_ids = notes[NOTE_ID].to_list()
        texts = notes[self.text_column].to_list()
        chunks = chunk_notes(texts, tokenizer=self.tokenizer, chunk_len=self.config.chunk_len, max_chunks=self.config.max_chunks)
        scores, peaks = score_in_batches(onnx_forward(self.session), chunks, n_labels=len(self.config.labels),
                                         batch_size=NOTES_PER_PASS, pad_id=self.tokenizer.pad_token_id)
        rows = []
        for i, note in enumerate(chunks):
            if not note.unprocessable:
                rows.extend(self._rows(note_ids[i], texts[i], note, scores[i], peaks[i], top_n=top_n, above_threshold=above_threshold))
        return Scored(
            candidates=pl.DataFrame(rows, schema=FRAME_SCHEMA, orient="row"),
            truncated=tuple(note_ids[i] for i, note in enumerate(chunks) if note.truncated),
            unprocessable=tuple(note_ids[i] for i, note in enumerate(chunks) if note.unprocessable),
            scores=scores, note_ids=tuple(note_ids), labels=self._labels, text_column=self.text_column,
        )

    def _rows(self, note_id: str, text: str, note: ChunkedNote, scores: np.ndarray, peaks: np.ndarray, *,
              top_n: int, above_threshold: bool) -> list[tuple]:
        """FRAME_SCHEMA rows of one note. scores, peaks: [n_labels]."""
        rows = []
        for system, cols in self._systems.items():
            order = cols[np.argsort(-scores[cols], kind="stable")]
            keep = np.arange(len(order)) < top_n
            if above_threshold:
                keep |= scores[order] >= self._thresholds[order]
            for rank in np.flatnonzero(keep).tolist():  # the kept labels only: a model has thousands
                j = order[rank]
                start, end = evidence_span(text, note, int(peaks[j]))
                evidence = text[start:end] if start is not None else None
                rows.append((note_id, system, self._codes[j], float(scores[j]), rank + 1, evidence, start, end))
        return rows

    def label_thresholds(self) -> pl.DataFrame:
        """(system, code, threshold): PLM-ICD's decision threshold of each label."""
        return pl.DataFrame({SYSTEM: list(self.config.systems), CODE: self._codes.tolist(),
                             "threshold": self._thresholds.astype(np.float64)})


def evidence_span(text: str, note: ChunkedNote, peak: int) -> tuple[int | None, int | None]:
    """Character span of the word holding the label's attention peak (a joined-token index)."""
    chunk_len = note.input_ids.shape[1]
    chunk, position = divmod(peak, chunk_len)
    if peak < 0 or chunk >= note.n_chunks:
        return None, None
    start, end = (int(v) for v in note.offsets[chunk, position])
    if start == NO_OFFSET:  # the peak fell on [CLS] or [SEP]
        return None, None
    while start > 0 and text[start - 1].isalnum():
        start -= 1
    while end < len(text) and text[end].isalnum():
        end += 1
    return start, end


def choose_precision(folder: Path, config: ModelConfig, precision: str, *, gpu: bool) -> str:
    """``auto``: fp16 then fp32 on a GPU; int8 then fp32 on CPU; among the kept variants present on disk."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    kept = set(config.onnx_kept)
    if precision == "auto":
        preferred: Sequence[str] = ("fp16", "fp32", "int8") if gpu else ("int8", "fp32")
        present = [p for p in preferred if p in kept and (folder / ONNX_FILES[p]).is_file()]
        precision = present[0] if present else "fp32"
    if precision not in kept:
        raise ModelBundleError(
            f"model {config.name} has no kept {precision} ONNX file (has: {sorted(kept) or 'none'}); "
            "run `coder export` on the model folder"
        )
    return precision


def load_scorer(folder: Path, config: ModelConfig, *, precision: str, device: str = "auto") -> PlmIcdScorer:
    """PLM-ICD on the ONNX variant ``precision`` (already chosen and verified) of a model folder."""
    session = create_session(folder / ONNX_FILES[precision], device="cpu" if precision == "int8" else device)
    if precision == "fp16" and session.get_providers()[0] == CPU_PROVIDER:
        logger.warning("fp16 model running on CPU: slower than int8/fp32 there; pass --precision int8 or fp32")
    width = output_width(session)
    if width != len(config.labels):
        raise ModelBundleError(f"{ONNX_FILES[precision]} outputs {width} logits, the config lists {len(config.labels)} labels; "
                               "re-export the model")
    return PlmIcdScorer(config=config, session=session, tokenizer=load_tokenizer(folder), precision=precision)


def gpu_requested(device: str) -> bool:
    """Whether ``device`` may put the model on a GPU here."""
    return device != "cpu" and gpu_present()
