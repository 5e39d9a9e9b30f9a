"""Human review: a seeded sample of notes with their top codes for coders to judge, and the verdicts read back.

The sample CSV has one row per (note, system, code) and an empty ``verdict`` column that coders
fill with ``correct`` or ``incorrect`` (blank rows are not counted). Precision@k from the verdicts
comes with a Wilson 95% interval, treating each judged code as one trial.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from coder.auditing.keys import KEY, code_key
from coder.errors import InputFileError
from coder.schema import NOTE_ID, SYSTEM

VERDICT = "verdict"
IN_GOLD = "in_gold"
_VERDICTS = ("correct", "incorrect")
_REVIEW_COLUMNS = (NOTE_ID, SYSTEM, "rank", "code", "description", "score", "above_threshold",
                   "evidence_text", "evidence_start", "evidence_end")
_Z95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, *, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) with no trials."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def review_sample(
    predictions: pl.DataFrame, *, n: int, seed: int, top: int = 8, gold: pl.DataFrame | None = None
) -> pl.DataFrame:
    """``n`` notes drawn with ``seed`` (the same seed and file give the same sample), their ``top`` codes per system.

    With ``gold``, the notes come from the audited ones and ``in_gold`` marks codes the coders assigned.
    """
    candidates = predictions.get_column(NOTE_ID).unique()
    if gold is not None:
        candidates = candidates.filter(candidates.is_in(gold.get_column(NOTE_ID).implode()))
    chosen = random.Random(seed).sample(sorted(candidates.to_list()), min(n, candidates.len()))
    sample = (
        predictions.filter(pl.col(NOTE_ID).is_in(chosen), pl.col("rank") <= top)
        .select(c for c in _REVIEW_COLUMNS if c in predictions.columns)  # description and evidence when the file has them
        .sort(NOTE_ID, SYSTEM, "rank")
    )
    if gold is not None:
        gold_keys = gold.select(NOTE_ID, SYSTEM, code_key()).unique().with_columns(pl.lit("yes").alias(IN_GOLD))
        sample = (
            sample.with_columns(code_key())
            .join(gold_keys, on=[NOTE_ID, SYSTEM, KEY], how="left")
            .with_columns(pl.col(IN_GOLD).fill_null("no"))
            .drop(KEY)
        )
    return sample.with_columns(pl.lit("").alias(VERDICT))


def score_review(path: Path, *, ks: Sequence[int]) -> dict[str, Any]:
    """Precision@k per system from a review CSV with verdicts, each with its Wilson 95% interval."""
    try:
        reviewed = pl.read_csv(path, schema_overrides={NOTE_ID: pl.String, VERDICT: pl.String, "rank": pl.Int64})
    except (OSError, pl.exceptions.PolarsError) as error:
        raise InputFileError(f"{path}: cannot read the review CSV ({type(error).__name__})") from None
    missing = [c for c in (NOTE_ID, SYSTEM, "rank", VERDICT) if c not in reviewed.columns]
    if missing:
        raise InputFileError(f"{path}: missing column(s) {', '.join(missing)}; export a sample with --sample --export")
    verdicts = reviewed.with_row_index("line", offset=2).with_columns(
        pl.col(VERDICT).str.strip_chars().str.to_lowercase().fill_null("")
    )
    odd = verdicts.filter(~pl.col(VERDICT).is_in(["", *_VERDICTS]))
    if odd.height:
        lines = ", ".join(str(v) for v in odd.get_column("line").head(5))
        raise InputFileError(f"{path}: verdict must be 'correct', 'incorrect' or blank; see CSV line(s) {lines}")
    judged = verdicts.filter(pl.col(VERDICT) != "")
    result: dict[str, Any] = {}
    for (system,), rows in judged.group_by(SYSTEM, maintain_order=True):
        per_k = {}
        for k in ks:
            top = rows.filter(pl.col("rank") <= k)
            correct = int((top.get_column(VERDICT) == "correct").sum())
            low, high = wilson_interval(correct, top.height)
            per_k[f"p@{k}"] = {"precision": correct / top.height if top.height else None,
                               "judged": top.height, "ci95_low": low, "ci95_high": high}
        result[system] = {"notes": rows.get_column(NOTE_ID).n_unique(), "judged": rows.height, **per_k}
    return result
