"""Small review fixtures shared by the review tests: two notes, their predictions in PREDICTION_SCHEMA, an open Review."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from coder.review.session import Review
from coder.schema import CM, PCS, PREDICTION_SCHEMA
from coder.validate import AssignableCodes

NOTE_1 = "Patient with fever and type 2 diabetes. Appendix removed."
NOTE_2 = "Known hypertension, asthma."


def _row(note, system, code, description, score, rank, above, evidence=None, column="text"):
    start, text = (NOTE_1.index(evidence), evidence) if evidence and note == "n1" else (None, None)
    if evidence and note == "n2":
        start, text = NOTE_2.index(evidence), evidence
    return (note, system, code, description, score, rank, above, "plm_icd", text, start,
            start + len(text) if text else None, column if text else None, "release")


def write_case(folder: Path, *, notes: pl.DataFrame | None = None, rows: list | None = None) -> tuple[Path, Path]:
    """(predictions, notes) parquet files in ``folder``: by default two notes, three and two suggested codes."""
    notes = notes if notes is not None else pl.DataFrame({"note_id": ["n1", "n2"], "text": [NOTE_1, NOTE_2]})
    rows = rows if rows is not None else [
        _row("n1", CM, "E11.9", "Type 2 diabetes mellitus without complications", 0.9, 1, True, "type 2 diabetes"),
        _row("n1", CM, "I10", "Essential (primary) hypertension", 0.4, 2, False),
        _row("n1", PCS, "0DTJ", "Resection of Appendix", 0.7, 1, True, "Appendix removed"),
        _row("n2", CM, "I10", "Essential (primary) hypertension", 0.8, 1, True, "hypertension"),
        _row("n2", CM, "E10.9", "Type 1 diabetes mellitus without complications", 0.2, 2, False),
    ]
    predictions, texts = folder / "predictions.parquet", folder / "notes.parquet"
    pl.DataFrame(rows, schema=PREDICTION_SCHEMA, orient="row").write_parquet(predictions)
    notes.write_parquet(texts)
    return predictions, texts


def open_review(folder: Path, ontology, *, out: Path | None = None, reviewer: str = "ana", **options) -> Review:
    predictions, notes = write_case(folder) if not (folder / "predictions.parquet").exists() else (
        folder / "predictions.parquet", folder / "notes.parquet")
    gate = AssignableCodes(ontology, truncations={PCS: (4,)})
    return Review.open(predictions, notes=notes, out=out or folder / "decisions.parquet", reviewer=reviewer, gate=gate,
                       **options)
