"""``coder audit``: read predictions and gold codes, score every system, write the report or review sample."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from coder.audit.metrics import audit_system
from coder.audit.report import render_report
from coder.audit.review import review_sample, score_review
from coder.errors import InputFileError, UsageError
from coder.io.manifest import manifest_path, read_manifest
from coder.schema import CODE, NOTE_ID, SYSTEM, SYSTEMS

log = logging.getLogger(__name__)

_PREDICTION_COLUMNS = {NOTE_ID: pl.String, SYSTEM: pl.String, CODE: pl.String, "rank": pl.Int32,
                       "score": pl.Float64, "above_threshold": pl.Boolean}
_GOLD_COLUMNS = {NOTE_ID: pl.String, CODE: pl.String, SYSTEM: pl.String}


@dataclass(frozen=True)
class AuditOutcome:
    """The audit in ``--json`` shape (keyed by system, plus ``llm`` when the run's manifest has it) and a text summary."""

    results: dict[str, Any]
    lines: tuple[str, ...]


def _read(path: Path, columns: dict[str, pl.DataType], what: str) -> pl.DataFrame:
    try:
        frame = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as error:
        raise InputFileError(f"{path}: cannot read the {what} parquet ({type(error).__name__})") from None
    for column, dtype in columns.items():
        if column not in frame.columns:
            raise InputFileError(f"{path}: {what} lack column {column!r} (columns: {', '.join(frame.columns)})")
        if frame.schema[column] != dtype and not (dtype.is_numeric() and frame.schema[column].is_numeric()):
            raise InputFileError(f"{path}: {what} column {column!r} is {frame.schema[column]}, expected {dtype}")
    return frame.cast({c: d for c, d in columns.items()})


def _ontology_helpers(ontology: Any, system: str) -> dict[str, Callable]:
    def chapter(key: str) -> str:
        canonical = ontology.lookup(key, system).canonical
        return (ontology.chapter(canonical, system) if canonical else "") or "unknown"

    return {
        "is_valid": lambda key: ontology.is_known(key, system),
        "chapter": chapter,
        "describe": lambda key: ontology.lookup(key, system).description or None,
        "display": lambda key: ontology.lookup(key, system).canonical or key,
    }


def audit_frames(
    predictions: pl.DataFrame, gold: pl.DataFrame, *, ks: Sequence[int], ontology: Any | None = None
) -> dict[str, Any]:
    """Per system: every metric, over the notes that appear in ``gold`` (other predicted notes are ignored)."""
    audited = gold.get_column(NOTE_ID).unique().implode()
    predictions = predictions.filter(pl.col(NOTE_ID).is_in(audited))
    present = set(gold.get_column(SYSTEM)) | set(predictions.get_column(SYSTEM))
    if present - set(SYSTEMS):
        log.warning("ignoring rows of unknown systems: %s", ", ".join(sorted(map(str, present - set(SYSTEMS)))))
    results = {}
    for system in (s for s in SYSTEMS if s in present):
        helpers = _ontology_helpers(ontology, system) if ontology is not None else {}
        audit = audit_system(
            predictions.filter(pl.col(SYSTEM) == system), gold.filter(pl.col(SYSTEM) == system), ks=ks, **helpers
        )
        results[system] = audit.as_dict()
    return results


def _summary_lines(results: dict[str, Any]) -> tuple[str, ...]:
    lines = []
    for system, result in results.items():
        if system == "llm":
            continue
        at_k = " ".join(f"{key.upper()} {value:.3f}" for key, value in result.items() if key[:2] in ("p@", "r@"))
        lines.append(
            f"{system}: {result['notes']} notes, MAP {result['map']:.3f}, {at_k}, "
            f"micro F1 {result['micro_f1']:.3f}, macro F1 {result['macro_f1']:.3f}"
        )
    return tuple(lines)


def run_audit(
    predictions: Path | None,
    *,
    gold: Path | None = None,
    codes_file: Path | None = None,
    ks: Sequence[int] = (1, 5, 8, 15),
    report: Path | None = None,
    sample: int | None = None,
    export: Path | None = None,
    seed: int = 0,
    review_top: int = 8,
    reviewed: Path | None = None,
) -> AuditOutcome:
    """Score ``predictions`` against ``gold``; optionally write an HTML ``report`` and a review sample to ``export``.

    With ``reviewed`` (a review CSV with verdicts) only the coders' precision@k is computed.
    """
    if not ks or min(ks) < 1:
        raise UsageError(f"--k needs positive integers, got {list(ks)}")
    if reviewed is not None:
        if predictions is not None or gold is not None:
            raise UsageError("--reviewed scores a filled-in review CSV on its own; drop PREDICTIONS and --gold")
        results = score_review(reviewed, ks=ks)
        lines = tuple(
            f"{system}: {r['judged']} codes judged on {r['notes']} notes; "
            + ", ".join(f"{key.upper()} {v['precision'] if v['precision'] is not None else float('nan'):.3f} "
                        f"[{v['ci95_low']:.3f}, {v['ci95_high']:.3f}]" for key, v in r.items() if key.startswith("p@"))
            for system, r in results.items()
        )
        return AuditOutcome(results=results, lines=lines)
    if predictions is None:
        raise UsageError("give the PREDICTIONS parquet written by `coder predict` (or --reviewed REVIEW.csv)")
    if (sample is None) != (export is None):
        raise UsageError("--sample N and --export REVIEW.csv go together")
    if report is not None and gold is None:
        raise UsageError("--report needs --gold")
    if gold is None and sample is None:
        raise UsageError("nothing to do: pass --gold GOLD.parquet, or --sample N --export REVIEW.csv")
    frame = _read(predictions, _PREDICTION_COLUMNS, "predictions")
    truth = _read(gold, _GOLD_COLUMNS, "gold codes") if gold is not None else None
    results: dict[str, Any] = {}
    lines: list[str] = []
    if truth is not None:
        from coder.ontology import load_ontology  # the ontology tables load only when scoring

        results = audit_frames(frame, truth, ks=ks, ontology=load_ontology(codes_file=codes_file))
        lines += _summary_lines(results)
    manifest = read_manifest(manifest_path(predictions))
    if manifest and manifest.get("llm") is not None:
        results["llm"] = manifest["llm"]
    if report is not None:
        report.write_text(render_report(results, title=f"coder audit: {predictions.name}"))
        lines.append(f"report: {report}")
    if export is not None and sample is not None:
        review = review_sample(frame, n=sample, seed=seed, top=review_top, gold=truth)
        review.write_csv(export)
        lines.append(f"review sample: {review.get_column(NOTE_ID).n_unique()} notes, {review.height} codes in {export}")
    return AuditOutcome(results=results, lines=tuple(lines))
