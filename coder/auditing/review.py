"""Human review: a seeded sample of notes with their top codes for coders to judge, and the verdicts read back.

The sample CSV has one row per (note, system, code) and an empty ``verdict`` column that coders
fill with ``correct`` or ``incorrect`` (blank rows are not counted); `coder review` writes decision
files instead (``coder.review.decisions``). Precision@k from either comes with a Wilson 95% interval,
treating each judged code as one trial; two reviewers' files give their agreement and Cohen's kappa.
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
from coder.review.decisions import ACCEPTED, ADDED, ASSIGNED, CODE_DECISIONS, REVIEWED, read_decisions
from coder.schema import DECISION, NOTE_ID, SYSTEM

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


def sample_notes(note_ids: pl.Series, *, n: int | None, seed: int, gold: pl.DataFrame | None = None) -> tuple[str, ...]:
    """``n`` of the distinct ``note_ids`` drawn with ``seed`` (the same seed and ids give the same sample), or all
    of them in their order when ``n`` is None; with ``gold``, only the notes it has."""
    if gold is not None:
        note_ids = note_ids.filter(note_ids.is_in(gold.get_column(NOTE_ID).implode()))
    if n is None:
        return tuple(note_ids.unique(maintain_order=True).to_list())
    distinct = sorted(note_ids.unique().to_list())
    return tuple(random.Random(seed).sample(distinct, min(n, len(distinct))))


def review_sample(
    predictions: pl.DataFrame, *, n: int, seed: int, top: int = 8, gold: pl.DataFrame | None = None
) -> pl.DataFrame:
    """``n`` notes drawn with ``seed`` (the same seed and file give the same sample), their ``top`` codes per system.

    With ``gold``, the notes come from the audited ones and ``in_gold`` marks codes the coders assigned.
    """
    chosen = sample_notes(predictions.get_column(NOTE_ID).unique(), n=n, seed=seed, gold=gold)
    sample = (
        predictions.filter(pl.col(NOTE_ID).is_in(list(chosen)), pl.col("rank") <= top)
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
    return precision_at_k(verdicts.filter(pl.col(VERDICT) != ""), ks=ks)


def precision_at_k(judged: pl.DataFrame, *, ks: Sequence[int]) -> dict[str, Any]:
    """Precision@k per system of judged codes (note_id, system, rank, verdict ``correct`` or ``incorrect``),
    each with its Wilson 95% interval."""
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


def score_decisions(paths: Sequence[Path], *, ks: Sequence[int]) -> dict[str, Any]:
    """Precision@k per system from `coder review` decision files (accepted: correct, rejected: incorrect; added
    codes are counted apart, as codes the model missed). One file: keyed by system, as ``score_review``; two or
    more: ``precision`` keyed by file, and ``agreement`` of every pair of files (``agreement``)."""
    decided = {str(path): read_decisions(path) for path in paths}
    scores = {name: _decisions_precision(frame.filter(pl.col(DECISION).is_in(CODE_DECISIONS)), ks=ks)
              for name, frame in decided.items()}
    if len(paths) == 1:
        return next(iter(scores.values()))
    names = list(decided)
    pairs = {f"{a} vs {b}": agreement(decided[a], decided[b]) for i, a in enumerate(names) for b in names[i + 1:]}
    return {"precision": scores, "agreement": pairs}


def _decisions_precision(decided: pl.DataFrame, *, ks: Sequence[int]) -> dict[str, Any]:
    judged = decided.filter(pl.col(DECISION) != ADDED).with_columns(
        pl.when(pl.col(DECISION) == ACCEPTED).then(pl.lit(_VERDICTS[0])).otherwise(pl.lit(_VERDICTS[1])).alias(VERDICT))
    result = precision_at_k(judged, ks=ks)
    for (system,), added in decided.filter(pl.col(DECISION) == ADDED).group_by(SYSTEM):
        result.setdefault(system, {"notes": 0, "judged": 0})["added"] = added.height
    return result


def agreement(first: pl.DataFrame, second: pl.DataFrame) -> dict[str, Any]:
    """Per system, how two reviewers' decisions (``read_decisions``) agree on the notes both marked reviewed:
    every code either judged there is one item, given to the note (accepted or added) or not by each; the
    share of items they agree on and Cohen's kappa (None when chance alone explains the agreement, e.g. one
    label throughout)."""
    both = set.intersection(*(set(frame.filter(pl.col(DECISION) == REVIEWED).get_column(NOTE_ID).to_list())
                              for frame in (first, second)))
    given = [frame.filter(pl.col(NOTE_ID).is_in(list(both)), pl.col(DECISION).is_in(CODE_DECISIONS)).select(
        NOTE_ID, SYSTEM, code_key(), pl.col(DECISION).is_in(ASSIGNED).alias(f"given_{i}")).unique([NOTE_ID, SYSTEM, KEY])
        for i, frame in enumerate((first, second))]
    items = given[0].join(given[1], on=[NOTE_ID, SYSTEM, KEY], how="full", coalesce=True).with_columns(
        pl.col("given_0", "given_1").fill_null(False))
    result: dict[str, Any] = {}
    for (system,), rows in items.group_by(SYSTEM, maintain_order=True):
        a, b = rows.get_column("given_0"), rows.get_column("given_1")
        observed = float((a == b).mean())
        chance = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
        kappa = (observed - chance) / (1 - chance) if chance < 1 else None
        result[system] = {"notes": rows.get_column(NOTE_ID).n_unique(), "codes": rows.height,
                          "agreement": observed, "kappa": kappa}
    return result
