"""Column names and parquet schemas, declared once and used everywhere."""

from __future__ import annotations

import polars as pl

CM = "ICD-10-CM"
PCS = "ICD-10-PCS"
SYSTEMS: tuple[str, ...] = (CM, PCS)

# Input notes.
NOTE_ID = "note_id"
TEXT = "text"
TEXT_ES = "text_es"  # Spanish original in CodiEsp dumps; evidence offsets point into it

# Gold codes (training labels and audit gold): one row per (note, code).
CODE = "code"
SYSTEM = "system"
GOLD_SCHEMA = pl.Schema({NOTE_ID: pl.String, CODE: pl.String, SYSTEM: pl.String})

# Evidence spans (CodiEsp-X shape): the text span a coder marked for a code, with
# character offsets "start end" into the note, ";"-separated for discontinuous spans.
EVIDENCE_TEXT = "evidence_es"
EVIDENCE_OFFSETS = "offsets_es"
EVIDENCE_SCHEMA = pl.Schema(
    {NOTE_ID: pl.String, SYSTEM: pl.String, CODE: pl.String, EVIDENCE_TEXT: pl.String, EVIDENCE_OFFSETS: pl.String}
)

# Predictions written by `coder predict`: one row per (note, system, code).
PREDICTION_SCHEMA = pl.Schema(
    {
        NOTE_ID: pl.String,
        SYSTEM: pl.String,
        CODE: pl.String,  # canonical form (see coder.ontology.normalize)
        "description": pl.String,
        "score": pl.Float64,  # calibrated probability in [0, 1]
        "rank": pl.Int32,  # 1-based within (note, system)
        "above_threshold": pl.Boolean,
        "source": pl.String,  # "+"-joined stages that proposed the code: plm_icd, lexicon, ontology, llm
        "evidence_text": pl.String,
        "evidence_start": pl.Int32,  # character offsets into the text column the evidence was read from
        "evidence_end": pl.Int32,
    }
)

# Rows that could not be coded, with a reason code (QuarantineReason values).
QUARANTINE_SCHEMA = pl.Schema(
    {NOTE_ID: pl.String, "row": pl.Int64, "file": pl.String, "reason": pl.String}
)


class QuarantineReason:
    """Reason codes written to the quarantine file."""

    NULL_TEXT = "null_text"
    EMPTY_TEXT = "empty_text"
    NULL_NOTE_ID = "null_note_id"
    DUPLICATE_NOTE_ID = "duplicate_note_id"
    UNPROCESSABLE = "unprocessable_text"
