"""The Predictor the pipeline calls: a model folder on onnxruntime, notes in, ranked codes out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from coder.model.folder import (
    CONFIG_FILE,
    ONNX_FILES,
    ModelConfig,
    check_versions,
    load_tokenizer,
    read_config,
    sha256_file,
    verify_file,
)
from coder.model.chunking import NO_OFFSET, ChunkedNote, chunk_notes, score_in_batches
from coder.errors import ModelBundleError, UsageError
from coder.model.session import CPU_PROVIDER, batch_notes, create_session, onnx_forward, output_width
from coder.candidates.features import PLM_ICD
from coder.rerank.reranker import ranked
from coder.schema import CODE, NOTE_ID, PREDICTION_SCHEMA, SYSTEM
from coder.train.stacking import STACK_PLM_TOP_K, Stack

logger = logging.getLogger(__name__)

SOURCE = PLM_ICD
STACK_DIR = "stack"  # lexicon, ontology search, TF-IDF and reranker (coder.train.stacking), when the model has them
PRECISIONS = ("auto", "fp32", "int8", "fp16")


@dataclass(frozen=True)
class BatchResult:
    """Predictions for one batch of notes, and the notes that needed special handling."""

    predictions: pl.DataFrame  # PREDICTION_SCHEMA; rank 1-based within (note_id, system); top_k per note and system
    truncated: tuple[str, ...]  # note ids whose text exceeded max tokens (scored on the first max tokens)
    unprocessable: tuple[str, ...]  # note ids with no tokens after tokenisation (no predictions for them)


class Predictor:
    """Scores notes with a model folder's ONNX model; build with ``load_predictor``."""

    def __init__(self, *, folder: Path, config: ModelConfig, session, precision: str, ontology, batch_size: int = 8,
                 stack: Stack | None = None):
        self.folder = folder
        self.stack = stack
        self.ontology = ontology
        self.config = config
        self.session = session
        self.precision = precision
        self.batch_size = batch_size
        self.tokenizer = load_tokenizer(folder)
        # Primary (encoder) column first; the stack's other columns (e.g. the lexicon's text_es) are optional.
        stack_columns = stack.builder.text_columns() if stack is not None else ()
        self.text_columns: tuple[str, ...] = tuple(dict.fromkeys([*config.text_columns.values(), *stack_columns]))
        self.execution_provider: str = session.get_providers()[0]
        self.model_hash: str = sha256_file(folder / CONFIG_FILE)  # the config holds every weight file's hash
        known = [ontology.lookup(label.code, label.system) for label in config.labels]
        self._writable = np.array([info.status != "unknown" for info in known], dtype=bool)
        self._descriptions = [info.description for info in known]
        self._thresholds = np.asarray(config.thresholds, dtype=np.float32)
        self._systems = {
            system: np.flatnonzero((np.asarray(config.systems) == system) & self._writable)
            for system in dict.fromkeys(config.systems)
        }
        if not self._writable.all():
            logger.warning("%d model labels are unknown to the current ontology and will not be written", int((~self._writable).sum()))

    def predict(self, batch: pl.DataFrame, *, top_k: int = 50, threshold_only: bool = False) -> BatchResult:
        """Rank codes per note and system. batch: note_id + text column(s), rows already validated."""
        if top_k < 1:
            raise UsageError(f"top_k must be >= 1, got {top_k}")
        column = self.text_columns[0]
        missing = [c for c in (NOTE_ID, column) if c not in batch.columns]
        if missing:
            raise UsageError(f"batch lacks column(s) {missing} needed by model {self.config.name}")
        note_ids = batch[NOTE_ID].to_list()
        texts = batch[column].to_list()
        chunks = chunk_notes(texts, tokenizer=self.tokenizer, chunk_len=self.config.chunk_len, max_chunks=self.config.max_chunks)
        scores, peaks = score_in_batches(
            onnx_forward(self.session), chunks, n_labels=len(self.config.labels),
            batch_size=self.batch_size, pad_id=self.tokenizer.pad_token_id,
        )
        # The stack reranks PLM-ICD's top codes, so it gets the same number it was fitted with.
        plm_top_k, plm_threshold_only = (STACK_PLM_TOP_K, False) if self.stack is not None else (top_k, threshold_only)
        rows = []
        for i, note in enumerate(chunks):
            if not note.unprocessable:
                rows.extend(self._rows(note_ids[i], texts[i], note, scores[i], peaks[i], top_k=plm_top_k,
                                       threshold_only=plm_threshold_only))
        predictions = pl.DataFrame(rows, schema=PREDICTION_SCHEMA, orient="row")
        if self.stack is not None:
            predictions = self._rerank(batch, predictions, top_k=top_k, threshold_only=threshold_only)
        return BatchResult(
            predictions=predictions,
            truncated=tuple(note_ids[i] for i, note in enumerate(chunks) if note.truncated),
            unprocessable=tuple(note_ids[i] for i, note in enumerate(chunks) if note.unprocessable),
        )

    def _rerank(self, batch: pl.DataFrame, plm: pl.DataFrame, *, top_k: int, threshold_only: bool) -> pl.DataFrame:
        """The stack's calibrated ranking: lexicon, ontology search and TF-IDF candidates plus these
        PLM-ICD scores, rescored by the reranker; only codes the ontology (and code list) knows."""
        scored = plm.select(NOTE_ID, SYSTEM, CODE, pl.col("score").alias(PLM_ICD))
        notes = batch.join(plm.select(NOTE_ID).unique(), on=NOTE_ID, how="semi")  # unprocessable notes stay out
        rows = self.stack.predictions(notes, describe=self.ontology.description, extra={PLM_ICD: scored}, top_k=top_k)
        rows = rows.filter(pl.struct(CODE, SYSTEM).map_elements(
            lambda row: self.ontology.is_known(row[CODE], row[SYSTEM]), return_dtype=pl.Boolean))
        if threshold_only:
            rows = rows.filter(pl.col("above_threshold"))
        return ranked(rows).select(PREDICTION_SCHEMA.names())

    def _rows(self, note_id: str, text: str, note: ChunkedNote, scores: np.ndarray, peaks: np.ndarray, *, top_k: int, threshold_only: bool) -> list[tuple]:
        """PREDICTION_SCHEMA rows of one note. scores, peaks: [n_labels]."""
        rows = []
        for system, cols in self._systems.items():
            order = cols[np.argsort(-scores[cols], kind="stable")]
            above = scores[order] >= self._thresholds[order]
            if threshold_only:
                order, above = order[above], above[above]
            for rank, (j, hit) in enumerate(zip(order[:top_k], above[:top_k], strict=False), start=1):
                start, end = _evidence_span(text, note, int(peaks[j]))
                evidence = text[start:end] if start is not None else None
                label = self.config.labels[j]
                rows.append((note_id, system, label.code, self._descriptions[j], float(scores[j]), rank, bool(hit), SOURCE, evidence, start, end))
        return rows


def _evidence_span(text: str, note: ChunkedNote, peak: int) -> tuple[int | None, int | None]:
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


def _choose_precision(folder: Path, config: ModelConfig, precision: str, *, gpu: bool) -> str:
    """``auto``: fp16 then fp32 on a GPU; int8 then fp32 on CPU; among the kept variants present on disk."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    kept = {name for name, info in config.onnx.items() if info.get("kept")}
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


def load_predictor(path: Path, *, device: str = "auto", precision: str = "auto", ontology=None,
                   batch_size: int | None = None, rerank: bool = True) -> Predictor:
    """Load and check a model folder (hashes, label count vs ONNX output width, versions).

    ``ontology``: the one to validate codes against (default: ``load_ontology()``); pass the
    pipeline's own when it was loaded with a user code list. ``batch_size``: notes per forward pass
    (default: what suits the execution provider, ``onnx_runtime.batch_notes``). ``rerank=False``: PLM-ICD scores alone,
    even when the folder has a stack (what the stack itself is fitted on).
    """
    from coder.ontology import load_ontology
    from coder.model.session import gpu_present

    config = read_config(path)
    check_versions(config)
    chosen = _choose_precision(path, config, precision, gpu=device != "cpu" and gpu_present())
    onnx_path = verify_file(path, config, ONNX_FILES[chosen])
    session = create_session(onnx_path, device="cpu" if chosen == "int8" else device)
    if chosen == "fp16" and session.get_providers()[0] == CPU_PROVIDER:
        logger.warning("fp16 model running on CPU: slower than int8/fp32 there; pass --precision int8 or fp32")
    width = output_width(session)
    if width != len(config.labels):
        raise ModelBundleError(f"{onnx_path} outputs {width} logits, {CONFIG_FILE} lists {len(config.labels)} labels; re-export the model")
    ontology = load_ontology() if ontology is None else ontology
    if config.ontology and config.ontology != dict(ontology.release):
        logger.warning("model labels were checked against ontology %s, running with %s", config.ontology, ontology.release)
    stack = Stack.load(path / STACK_DIR) if rerank and (path / STACK_DIR).is_dir() else None
    logger.info("model %s (%s, %d labels%s) on %s", config.name, chosen, len(config.labels),
                ", reranked by its stack" if stack else "", session.get_providers()[0])
    return Predictor(folder=path, config=config, session=session, precision=chosen, ontology=ontology,
                     batch_size=batch_size or batch_notes(session), stack=stack)
