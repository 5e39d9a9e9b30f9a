"""Column names and parquet schemas, declared once and used everywhere.

A new output column is one line in ``PREDICTION_SCHEMA`` plus the stage that fills it.
"""

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
# character offsets "start end" into a text column of the note, ";"-separated for discontinuous
# spans. In memory the span columns name no language: ``coder.io.corpus.Corpus`` keeps with each
# span the column its offsets point into (text_es for coders' spans, text for projected ones).
SPAN_TEXT = "span_text"
SPAN_OFFSETS = "span_offsets"
SPAN_SCHEMA = pl.Schema({NOTE_ID: pl.String, SYSTEM: pl.String, CODE: pl.String, SPAN_TEXT: pl.String, SPAN_OFFSETS: pl.String})
# The evidence file's names for them (CodiEsp-X's, whichever column the offsets point into), renamed on read.
EVIDENCE_FILE_TEXT = "evidence_es"
EVIDENCE_FILE_OFFSETS = "offsets_es"

# Columns of candidates and predictions.
KEY = (NOTE_ID, SYSTEM, CODE)  # one candidate or prediction row per key
DESCRIPTION = "description"
SCORE = "score"
RANK = "rank"
ABOVE_THRESHOLD = "above_threshold"
THRESHOLD = "threshold"  # a candidate's decision threshold (not written)
SOURCE = "source"
PLM_ICD = "plm_icd"  # the chunk-and-score stage's name among the candidate sources (coder.model.scorer)
VALIDITY = "validity"  # where a written code's validity comes from (coder.validate): "release" or "code_list"
EVIDENCE = ("evidence_text", "evidence_start", "evidence_end")
EVIDENCE_IN = "evidence_column"  # the text column the evidence offsets point into
EVIDENCE_COLUMNS = pl.Schema({EVIDENCE[0]: pl.String, EVIDENCE[1]: pl.Int32, EVIDENCE[2]: pl.Int32})

# Predictions written by `coder predict`: one row per (note, system, code).
PREDICTION_SCHEMA = pl.Schema(
    {
        NOTE_ID: pl.String,
        SYSTEM: pl.String,
        CODE: pl.String,  # canonical form (see coder.ontology.normalize)
        DESCRIPTION: pl.String,
        SCORE: pl.Float64,  # calibrated probability in [0, 1]
        RANK: pl.Int32,  # 1-based within (note, system)
        ABOVE_THRESHOLD: pl.Boolean,
        SOURCE: pl.String,  # "+"-joined stages that proposed the code: plm_icd, lexicon, ontology, llm, ...
        **EVIDENCE_COLUMNS,  # evidence text and character offsets into the text column it was read from
        EVIDENCE_IN: pl.String,  # that column (text_es for a Spanish lexicon's span, text for English evidence)
        VALIDITY: pl.String,  # "release" (an item or truncation of the ICD-10 release) or "code_list" (the code list alone)
    }
)

# A reviewer's decisions, written by `coder review`: one row per (note, system, code) judged, and one per
# note (system, code, rank and score null) once it is reviewed or commented. Rank and score are the
# prediction's, null for a code the reviewer added.
DECISION = "decision"
REVIEWER = "reviewer"
DECIDED_AT = "time"
COMMENT = "comment"
DECISION_SCHEMA = pl.Schema(
    {
        NOTE_ID: pl.String,
        SYSTEM: pl.String,
        CODE: pl.String,
        DECISION: pl.String,  # accepted, rejected, added (a code); reviewed, or comment while still open (the note)
        REVIEWER: pl.String,
        DECIDED_AT: pl.Datetime("us", "UTC"),
        RANK: pl.Int32,
        SCORE: pl.Float64,
        COMMENT: pl.String,
    }
)

# Rows that could not be coded, with a reason code (QuarantineReason values).
QUARANTINE_SCHEMA = pl.Schema(
    {NOTE_ID: pl.String, "row": pl.Int64, "file": pl.String, "reason": pl.String}
)


class QuarantineReason:
    """Reason codes written to the quarantine file."""

    INVALID_UTF8 = "invalid_utf8"  # the id or the text is not valid UTF-8
    NULL_NOTE_ID = "null_note_id"
    BLANK_NOTE_ID = "blank_note_id"  # empty or only spaces (ids are trimmed)
    DUPLICATE_NOTE_ID = "duplicate_note_id"
    NULL_TEXT = "null_text"
    EMPTY_TEXT = "empty_text"
    UNPROCESSABLE = "unprocessable_text"
