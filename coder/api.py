"""The Python API: code notes in-process, and audit predictions, with the CLI's rows and numbers.

    import coder, polars as pl
    model = coder.load_model()                         # the shipped default model, or load_model("models/NAME")
    coded = model.predict(pl.read_parquet("notes.parquet"))
    coded.predictions                                  # PREDICTION_SCHEMA, as `coder predict` writes
    coded.quarantine                                   # rows not coded, with a reason (never raised)
    coder.audit(coded.predictions, gold, model=model)  # the dictionary of `coder audit --json`
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from coder.auditing.score import ValidCodes, audit_frames, read_predictions, run_audit
from coder.errors import UsageError
from coder.io.corpus import check_codes, read_codes
from coder.io.read import NoteBatch
from coder.io.screen import RowScreen
from coder.model.load import Model
from coder.model.load import load_model as _load
from coder.run import DEFAULT_BATCH_SIZE, process_batch
from coder.schema import NOTE_ID, PREDICTION_SCHEMA, QUARANTINE_SCHEMA

log = logging.getLogger(__name__)

FRAME = Path("<DataFrame>")  # the ``file`` of quarantine rows that come from a frame


@dataclass(frozen=True)
class Coded:
    """What ``CodingModel.predict`` returns."""

    predictions: pl.DataFrame
    """PREDICTION_SCHEMA rows: one per (note, system, code), best first."""
    quarantine: pl.DataFrame
    """QUARANTINE_SCHEMA rows for the input rows that were not coded: ``row`` is the row number in the
    frame, ``file`` is ``<DataFrame>``, ``reason`` says why."""


class CodingModel:
    """A loaded model that codes polars frames of notes; build with ``coder.load_model``."""

    def __init__(self, model: Model):
        self.model = model

    def predict(self, notes: pl.DataFrame, *, id_column: str = NOTE_ID, text_column: str | None = None, top_k: int = 50,
                threshold_only: bool = False, batch_size: int = DEFAULT_BATCH_SIZE) -> Coded:
        """Code ``notes`` (an id column and the model's text columns; ``text_column`` is read as the
        model's main text) exactly as ``coder predict`` codes a file: same stages, same batches,
        same rows. Rows that cannot be coded go to ``quarantine`` with a reason."""
        if top_k < 1 or batch_size < 1:
            raise UsageError(f"top_k and batch_size must be at least 1, got {top_k} and {batch_size}")
        primary, *optional = self.model.text_columns
        renames = {id_column: NOTE_ID, (text_column or primary): primary}
        missing = [column for column in renames if column not in notes.columns]
        if missing:
            raise UsageError(f"notes lack column(s) {missing}; they have {notes.columns}")
        kept = [column for column in optional if column in notes.columns and column not in renames]
        frame = notes.select(*renames, *kept).rename(renames).cast(pl.String)
        screen = RowScreen()
        outputs = [process_batch(self.model, NoteBatch(index=i, file=FRAME, first_row=start, frame=frame.slice(start, batch_size)),
                                 screen=screen, top_k=top_k, threshold_only=threshold_only)
                   for i, start in enumerate(range(0, frame.height, batch_size))]
        return Coded(predictions=pl.concat([PREDICTION_SCHEMA.to_frame(), *(o.predictions for o in outputs)]),
                     quarantine=pl.concat([QUARANTINE_SCHEMA.to_frame(), *(o.quarantine for o in outputs)]))


def load_model(path: str | Path | None = None, *, device: str = "auto", precision: str = "auto",
               codes_file: str | Path | None = None) -> CodingModel:
    """A model folder (default: ``$CODER_MODEL``, else the shipped ``models/codiesp-minilm``) ready to
    code frames; the same checks as ``coder predict`` (no pickle, every file's sha256)."""
    return CodingModel(_load(Path(path) if path else None, device=device, precision=precision,
                             codes_file=Path(codes_file) if codes_file else None))


def audit(predictions: str | Path | pl.DataFrame, gold: str | Path | pl.DataFrame, *, model: CodingModel | None = None,
          codes_file: str | Path | None = None, ks: Sequence[int] = (1, 5, 8, 15)) -> dict[str, Any]:
    """The dictionary ``coder audit --json`` prints. ``predictions``: a file written by ``coder
    predict`` (its manifest gives the code list) or a frame from ``CodingModel.predict`` (pass its
    ``model`` for the code list); ``codes_file`` overrides either."""
    if not isinstance(predictions, pl.DataFrame) and not isinstance(gold, pl.DataFrame):
        return run_audit(Path(predictions), gold=Path(gold), codes_file=Path(codes_file) if codes_file else None, ks=ks).results
    frame = check_codes(predictions, "the predictions frame") if isinstance(predictions, pl.DataFrame) \
        else read_predictions(Path(predictions))
    truth = check_codes(gold, "the gold frame") if isinstance(gold, pl.DataFrame) else read_codes(Path(gold))
    listed = Path(codes_file) if codes_file else (model.model.code_list if model else None)
    valid = ValidCodes(listed, "--codes-file" if codes_file else "the model" if listed else "none",
                       dict(model.model.config.truncations) if model else {})
    return {**audit_frames(frame, truth, ks=ks, gate=valid.gate()), "valid_codes": valid.as_dict()}
