"""The Python API: code notes in-process, and audit predictions, with the CLI's rows and numbers.

    import coder, polars as pl
    model = coder.load_model()                         # the shipped default model, or load_model("models/NAME")
    coded = model.predict(pl.read_parquet("notes.parquet"))  # or a LazyFrame, a pandas frame, a pyarrow Table
    coded.predictions                                  # PREDICTION_SCHEMA, as `coder predict` writes
    coded.quarantine                                   # rows not coded, with a reason (never raised)
    coder.audit(coded.predictions, gold, model=model)  # the dictionary of `coder audit --json`

A frame is read by the code that reads the CLI's files (``coder.io.read.note_columns`` and
``note_batch``, then ``coder.io.screen``): an id or text column that is not strings (or UTF-8 bytes)
is refused with the CLI's message, and a bad row (not UTF-8, a null, blank or repeated id, no text)
goes to ``quarantine`` with the CLI's reason. Every error raised is a ``coder.errors.CoderError``
subclass, whose ``exit_code`` is the one the CLI exits with for it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from coder.auditing.score import ValidCodes, audit_frames, read_predictions, run_audit
from coder.batches import code_rows
from coder.errors import InputFileError, UsageError
from coder.io.corpus import read_codes
from coder.io.read import InputPlan, note_batch, note_columns
from coder.io.screen import RowScreen
from coder.assembly import Model
from coder.assembly import load_model as _load
from coder.run import DEFAULT_BATCH_SIZE
from coder.schema import NOTE_ID, PREDICTION_SCHEMA, QUARANTINE_SCHEMA

log = logging.getLogger(__name__)

FRAME = Path("<DataFrame>")  # the ``file`` of quarantine rows and errors that come from a frame

Frame = Any
"""A polars DataFrame or LazyFrame, a pandas DataFrame or a pyarrow Table."""


def _arrow(frame: Frame, what: str) -> pa.Table:
    """``frame`` as one arrow table: the one conversion at the API's entry, before the CLI's checks."""
    try:
        if isinstance(frame, pl.LazyFrame):
            frame = frame.collect()
        if isinstance(frame, pl.DataFrame):
            return frame.to_arrow()
        if isinstance(frame, pa.Table):
            return frame
        pandas = sys.modules.get("pandas")  # a pandas frame exists only once pandas is imported: never import it here
        if pandas is not None and isinstance(frame, pandas.DataFrame):
            return pa.Table.from_pandas(frame, preserve_index=False)
    except (pl.exceptions.PolarsError, pa.ArrowException, OSError) as error:
        raise InputFileError(f"{FRAME}: {what} cannot be read as an arrow table ({type(error).__name__}); "
                             "give each column a single type (strings for ids and text)") from None
    raise UsageError(f"{what} must be a polars DataFrame or LazyFrame, a pandas DataFrame or a pyarrow Table, "
                     f"got {type(frame).__name__}")


@dataclass(frozen=True)
class Coded:
    """What ``CodingModel.predict`` returns."""

    predictions: pl.DataFrame
    """PREDICTION_SCHEMA rows: one per (note, system, code), best first."""
    quarantine: pl.DataFrame
    """QUARANTINE_SCHEMA rows for the input rows that were not coded: ``row`` is the row number in the
    frame, ``file`` is ``<DataFrame>``, ``reason`` says why."""


class CodingModel:
    """A loaded model that codes frames of notes; build with ``coder.load_model``."""

    def __init__(self, model: Model):
        self.model = model

    def predict(self, notes: Frame, *, id_column: str = NOTE_ID, text_column: str | None = None, top_k: int = 50,
                threshold_only: bool = False, batch_size: int = DEFAULT_BATCH_SIZE) -> Coded:
        """Code ``notes`` (an id column and the model's text columns; ``text_column`` is read as the
        model's main text) exactly as ``coder predict`` codes a file: same stages, same batches,
        same rows. ``notes`` is any ``Frame``; its columns are checked as the CLI checks a file's
        (InputFileError, exit code 3, naming ``<DataFrame>``). Rows that cannot be coded go to
        ``quarantine`` with the CLI's reason."""
        if top_k < 1 or batch_size < 1:
            raise UsageError(f"top_k and batch_size must be at least 1, got {top_k} and {batch_size}")
        table = _arrow(notes, "notes")
        columns, skipped = note_columns({FRAME: table.schema}, id_column=id_column, text_columns=self.model.text_columns,
                                        primary_column=text_column)
        plan = InputPlan(files=(), id_column=id_column, columns=columns, skipped_columns=skipped)
        screen = RowScreen()
        outputs = [code_rows(self.model, note_batch(table.slice(start, batch_size), plan=plan, index=i, file=FRAME,
                                                    first_row=start),
                             screen=screen, top_k=top_k, threshold_only=threshold_only)
                   for i, start in enumerate(range(0, table.num_rows, batch_size))]
        return Coded(predictions=pl.concat([PREDICTION_SCHEMA.to_frame(), *(o.predictions for o in outputs)]),
                     quarantine=pl.concat([QUARANTINE_SCHEMA.to_frame(), *(o.quarantine for o in outputs)]))


def load_model(path: str | Path | None = None, *, device: str = "auto", precision: str = "auto",
               codes_file: str | Path | None = None) -> CodingModel:
    """A model folder (default: ``$CODER_MODEL``, else the shipped ``models/codiesp-minilm``) ready to
    code frames; the same checks as ``coder predict`` (no pickle, every file's sha256)."""
    return CodingModel(_load(Path(path) if path else None, device=device, precision=precision,
                             codes_file=Path(codes_file) if codes_file else None))


def _read(source: str | Path | Frame, reader: Callable[..., pl.DataFrame], name: str) -> pl.DataFrame:
    """A file, or a frame read by ``reader`` with the file's checks and ``name`` in its errors."""
    if isinstance(source, (str, Path)):
        return reader(Path(source))
    return reader(Path(name), table=_arrow(source, name))


def audit(predictions: str | Path | Frame, gold: str | Path | Frame, *, model: CodingModel | None = None,
          codes_file: str | Path | None = None, ks: Sequence[int] = (1, 5, 8, 15)) -> dict[str, Any]:
    """The dictionary ``coder audit --json`` prints. ``predictions``: a file written by ``coder
    predict`` (its manifest gives the code list) or a frame (any ``Frame``) from ``CodingModel.predict``
    (pass its ``model`` for the code list); ``codes_file`` overrides either. ``gold``: a file or a frame.
    A frame is checked as the CLI checks a file (columns, types, null rows: InputFileError)."""
    if isinstance(predictions, (str, Path)) and isinstance(gold, (str, Path)):
        return run_audit(Path(predictions), gold=Path(gold), codes_file=Path(codes_file) if codes_file else None, ks=ks).results
    frame = _read(predictions, read_predictions, "the predictions frame")
    truth = _read(gold, read_codes, "the gold frame")
    listed = Path(codes_file) if codes_file else (model.model.code_list if model else None)
    valid = ValidCodes(listed, "--codes-file" if codes_file else "the model" if listed else "none",
                       dict(model.model.config.truncations) if model else {})
    return {**audit_frames(frame, truth, ks=ks, gate=valid.gate()), "valid_codes": valid.as_dict()}
