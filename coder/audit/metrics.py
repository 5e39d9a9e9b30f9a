"""Ranking metrics, computed exactly as CodiEsp's official scorer does.

CodiEsp (codiespD_P_evaluation.py via trectools): per note, predictions are taken in rank
order, lower-cased, repeated codes and codes outside the valid code list dropped, ranks
renumbered; AP = (1/R) * sum of precision@k over the ranks k that hit a gold code, with R the
number of distinct gold codes of the note. The mean runs over the notes that are both in the gold
and have at least one valid prediction (trectools' ``get_map`` divides by the queries common to
run and qrels: a gold note without predictions, and a predicted note without gold codes of the
system, are both left out).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from coder.schema import CODE, NOTE_ID


def clean_ranking(
    ranked: Iterable[str], *, is_valid: Callable[[str], bool] | None = None, limit: int = 1000
) -> list[str]:
    """Lower-case, drop repeats (first kept) and invalid codes, keep at most ``limit``."""
    seen: set[str] = set()
    out: list[str] = []
    for code in ranked:
        key = code.lower()
        if key in seen or (is_valid is not None and not is_valid(code)):
            continue
        seen.add(key)
        out.append(key)
        if len(out) == limit:
            break
    return out


def average_precision(ranked: Sequence[str], gold: Collection[str]) -> float:
    """AP of an already cleaned ranking against a set of (lower-cased) gold codes."""
    if not gold:
        return 0.0
    hits = 0
    total = 0.0
    for k, code in enumerate(ranked, start=1):
        if code in gold:
            hits += 1
            total += hits / k
    return total / len(gold)


def mean_average_precision(
    predictions: Mapping[str, Sequence[str]],
    gold: Mapping[str, Collection[str]],
    *,
    is_valid: Callable[[str], bool] | None = None,
) -> float:
    """CodiEsp MAP. ``predictions``: note id -> codes in rank order; ``gold``: note id -> codes.

    Only notes with gold codes and at least one valid prediction count (official behaviour).
    """
    scores = []
    for note_id, ranked in predictions.items():
        cleaned = clean_ranking(ranked, is_valid=is_valid)
        truth = {code.lower() for code in gold.get(note_id, ())}
        if cleaned and truth:
            scores.append(average_precision(cleaned, truth))
    return sum(scores) / len(scores) if scores else 0.0


# --- Frame-level audit of a predictions parquet against gold codes -----------------------------
# Codes are compared by a key (upper-cased, dots and spaces removed), so "N44.8", "n448" and
# "N448" match; an ICD-10 dot only ever sits after the third character, so nothing is lost.

KEY = "key"
_GOLD = "is_gold"
_POS = "position"


def code_key(column: str = CODE) -> pl.Expr:
    """Comparison key of a code column."""
    return pl.col(column).str.to_uppercase().str.replace_all(r"[.\s]", "").alias(KEY)


@dataclass(frozen=True)
class CodeCount:
    """A code with how often it was wrongly predicted or missed."""

    code: str
    count: int
    description: str | None


@dataclass(frozen=True)
class SystemAudit:
    """Every metric of one system (ICD-10-CM or ICD-10-PCS)."""

    notes: int
    """Audited notes with at least one gold code of this system (P@k and R@k average over them)."""
    map: float
    precision_at: dict[int, float]
    recall_at: dict[int, float]
    micro: dict[str, float]
    """precision, recall, f1 of the ``above_threshold`` codes, pooled over all (note, code) pairs."""
    macro: dict[str, float]
    """precision, recall, f1 averaged over the codes in gold or predicted above threshold."""
    chapters: list[dict[str, Any]]
    """Per ICD-10-CM chapter or ICD-10-PCS section: gold, tp, fp, fn, precision, recall, f1."""
    false_positives: list[CodeCount]
    missed: list[CodeCount]
    pr_curve: list[dict[str, float]]
    """Micro precision and recall if the codes with score >= threshold were kept, per threshold (0, 0.05, ...)
    up to the highest score."""
    calibration: list[dict[str, float]]
    """Reliability diagram: per score bin, mean score, fraction of gold codes, count."""

    def as_dict(self) -> dict[str, Any]:
        """JSON shape: ``map``, ``p@k``, ``r@k``, ``micro_f1``, ``macro_f1``, ``notes``, and the details."""
        out: dict[str, Any] = {"notes": self.notes, "map": self.map}
        out |= {f"p@{k}": v for k, v in self.precision_at.items()}
        out |= {f"r@{k}": v for k, v in self.recall_at.items()}
        out |= {f"micro_{name}": v for name, v in self.micro.items()}
        out |= {f"macro_{name}": v for name, v in self.macro.items()}
        out["chapters"] = self.chapters
        out["top_false_positives"] = [vars(c) for c in self.false_positives]
        out["top_missed"] = [vars(c) for c in self.missed]
        out["pr_curve"] = self.pr_curve
        out["calibration"] = self.calibration
        return out


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _prf(tp: float, fp: float, fn: float) -> dict[str, float]:
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"precision": precision, "recall": recall, "f1": _ratio(2 * precision * recall, precision + recall)}


def _ranked(predictions: pl.DataFrame, gold_keys: pl.DataFrame) -> pl.DataFrame:
    """One row per (note, key) in rank order, repeats dropped, ``position`` renumbered, ``is_gold`` marked."""
    return (
        predictions.sort(NOTE_ID, "rank")
        .unique(subset=[NOTE_ID, KEY], keep="first", maintain_order=True)
        .with_columns(pl.int_range(1, pl.len() + 1).over(NOTE_ID).alias(_POS))
        .join(gold_keys.with_columns(pl.lit(True).alias(_GOLD)), on=[NOTE_ID, KEY], how="left")
        .with_columns(pl.col(_GOLD).fill_null(False))
    )


def _at_k(ranked: pl.DataFrame, gold_keys: pl.DataFrame, ks: Sequence[int]) -> tuple[dict[int, float], dict[int, float]]:
    per_note = gold_keys.group_by(NOTE_ID).agg(pl.len().alias("n_gold"))
    hits = ranked.group_by(NOTE_ID).agg(
        *[(pl.col(_GOLD) & (pl.col(_POS) <= k)).sum().alias(f"h{k}") for k in ks]
    )
    table = per_note.join(hits, on=NOTE_ID, how="left").fill_null(0)
    if table.is_empty():
        return dict.fromkeys(ks, 0.0), dict.fromkeys(ks, 0.0)
    precision = {k: float((table[f"h{k}"] / k).mean()) for k in ks}
    recall = {k: float((table[f"h{k}"] / table["n_gold"]).mean()) for k in ks}
    return precision, recall


def _confusion(ranked: pl.DataFrame, gold_keys: pl.DataFrame) -> pl.DataFrame:
    """Per key: tp, fp, fn of the above-threshold codes."""
    above = ranked.filter("above_threshold")
    predicted = above.group_by(KEY).agg(pl.col(_GOLD).sum().alias("tp"), (~pl.col(_GOLD)).sum().alias("fp"))
    found = gold_keys.join(above.select(NOTE_ID, KEY), on=[NOTE_ID, KEY], how="anti")
    missed = found.group_by(KEY).agg(pl.len().alias("fn"))
    return predicted.join(missed, on=KEY, how="full", coalesce=True).fill_null(0).sort(KEY)


def _top(
    table: pl.DataFrame, column: str, *, describe: Callable[[str], str | None], display: Callable[[str], str], n: int
) -> list[CodeCount]:
    rows = table.filter(pl.col(column) > 0).sort([column, KEY], descending=[True, False]).head(n)
    return [
        CodeCount(code=display(key), count=int(count), description=describe(key))
        for key, count in rows.select(KEY, column).iter_rows()
    ]


def _chapters(confusion: pl.DataFrame, chapter: Callable[[str], str]) -> list[dict[str, Any]]:
    totals = (
        confusion.with_columns(pl.col(KEY).map_elements(chapter, return_dtype=pl.String).alias("chapter"))
        .group_by("chapter")
        .agg(pl.col("tp").sum(), pl.col("fp").sum(), pl.col("fn").sum())
        .sort(pl.col("chapter").str.zfill(3))  # CM chapters are numbers: 2 before 10
    )
    return [
        {"chapter": name, "gold": tp + fn, "tp": tp, "fp": fp, "fn": fn, **_prf(tp, fp, fn)}
        for name, tp, fp, fn in totals.select("chapter", "tp", "fp", "fn").iter_rows()
    ]


def _pr_curve(ranked: pl.DataFrame, n_gold: int, steps: int = 20) -> list[dict[str, float]]:
    curve = []
    for i in range(steps + 1):
        threshold = i / steps
        kept = ranked.filter(pl.col("score") >= threshold)
        if kept.is_empty():  # precision is undefined above the highest score
            break
        tp = int(kept[_GOLD].sum())
        curve.append({"threshold": threshold, **_prf(tp, kept.height - tp, n_gold - tp)})
    return curve


def _calibration(ranked: pl.DataFrame, bins: int = 10) -> list[dict[str, float]]:
    binned = (
        ranked.with_columns((pl.col("score") * bins).floor().clip(0, bins - 1).cast(pl.Int32).alias("bin"))
        .group_by("bin")
        .agg(pl.col("score").mean().alias("mean_score"), pl.col(_GOLD).mean().alias("fraction_gold"), pl.len().alias("count"))
        .sort("bin")
    )
    return [
        {"low": b / bins, "high": (b + 1) / bins, "mean_score": score, "fraction_gold": frac, "count": count}
        for b, score, frac, count in binned.iter_rows()
    ]


def audit_system(
    predictions: pl.DataFrame,
    gold: pl.DataFrame,
    *,
    ks: Sequence[int] = (1, 5, 8, 15),
    is_valid: Callable[[str], bool] | None = None,
    chapter: Callable[[str], str] = lambda key: key[:1],
    describe: Callable[[str], str | None] = lambda key: None,
    display: Callable[[str], str] = lambda key: key,
    top: int = 10,
) -> SystemAudit:
    """Audit one system. Both frames hold only that system and only the audited notes.

    ``predictions``: PREDICTION_SCHEMA rows; ``gold``: GOLD_SCHEMA rows. ``is_valid``, ``chapter``,
    ``describe`` and ``display`` take a code key (see ``code_key``); ``is_valid`` is CodiEsp's valid
    list for MAP; ``display`` gives the form shown in the top lists (the canonical code).
    """
    predictions = predictions.with_columns(code_key())
    gold_keys = gold.select(NOTE_ID, code_key()).unique()
    ranked = _ranked(predictions, gold_keys)
    by_note = ranked.group_by(NOTE_ID, maintain_order=True).agg(pl.col(KEY))
    truth = gold_keys.group_by(NOTE_ID).agg(pl.col(KEY))
    map_score = mean_average_precision(
        dict(by_note.iter_rows()), dict(truth.iter_rows()), is_valid=is_valid
    )
    precision_at, recall_at = _at_k(ranked, gold_keys, ks)
    confusion = _confusion(ranked, gold_keys)
    per_code = [_prf(tp, fp, fn) for tp, fp, fn in confusion.select("tp", "fp", "fn").iter_rows()]
    macro = {name: _ratio(sum(c[name] for c in per_code), len(per_code)) for name in ("precision", "recall", "f1")}
    return SystemAudit(
        notes=truth.height,
        map=map_score,
        precision_at=precision_at,
        recall_at=recall_at,
        micro=_prf(*(int(confusion[c].sum()) for c in ("tp", "fp", "fn"))),
        macro=macro,
        chapters=_chapters(confusion, chapter),
        false_positives=_top(confusion, "fp", describe=describe, display=display, n=top),
        missed=_top(confusion, "fn", describe=describe, display=display, n=top),
        pr_curve=_pr_curve(ranked, gold_keys.height),
        calibration=_calibration(ranked),
    )
