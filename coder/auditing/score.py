"""``coder audit``: predictions against coders' codes, per system: CodiEsp MAP, P@k, R@k, F1 and the details.

The valid code list for MAP is the one the predictions were made with: ``coder audit`` reads the
run's manifest beside the predictions and validates with its code list (``--codes-file``
overrides). Codes are compared by a key (upper-cased, dots and spaces removed), so "N44.8",
"n448" and "N448" match; an ICD-10 dot only ever sits after the third character.

An audit refuses what it cannot score rather than print a MAP of 0: rows with a null note id,
system or code or an unknown system (``coder.io.corpus.check_codes``), and predictions that share
no note with the gold. Predicted notes outside the gold are ignored and counted.

Gold it can score but should question is scored and reported, per system, in the JSON, the text
summary and the HTML report: rows that repeat an earlier row's note and code (scored once), and
codes that are no valid code by the rule MAP validates predictions with (``ValidCodes``: the release,
the code list, the model's truncation levels). Those stay in the gold, as CodiEsp's official script
keeps its gold unfiltered, so MAP stays comparable with it: a prediction cannot match them, and they
count as missed in MAP's denominator, recall and ``top_missed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from coder.auditing.keys import KEY, code_key
from coder.auditing.report import render_report
from coder.auditing.review import review_sample, score_decisions, score_review
from coder.errors import InputFileError, UsageError
from coder.hashing import file_sha256
from coder.io.atomic import write_text
from coder.io.corpus import check_codes, read_codes
from coder.io.manifest import manifest_path, read_manifest
from coder.io.read import read_table
from coder.metrics import RankingScores, prf, ranking_scores
from coder.schema import ABOVE_THRESHOLD, CODE, DESCRIPTION, EVIDENCE, NOTE_ID, RANK, SCORE, SOURCE, SYSTEM, SYSTEMS
from coder.validate import AssignableCodes

_GOLD = "is_gold"
_POS = "position"
_SHOWN_CHARS = 20
"""An invalid gold code is shown cut to this length: a code is at most 8 characters, a longer one may be text."""

@dataclass(frozen=True)
class CodeCount:
    """A code with how often it was wrongly predicted or missed."""

    code: str
    count: int
    description: str | None


@dataclass(frozen=True)
class SystemAudit:
    """Every metric of one system (ICD-10-CM or ICD-10-PCS)."""

    ranking: RankingScores
    """MAP (official and over all gold notes), P@k, R@k, and the notes they average over."""
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
    gold_rows: int
    duplicate_gold_rows: int
    """Gold rows that repeat an earlier row's note and code (by key): each pair is scored once."""
    invalid_gold_rows: int
    """Scored gold (note, code) pairs whose code is no valid code; kept in the scoring (see the module)."""
    invalid_gold: list[CodeCount]
    """The most frequent of those codes, as written (cut to ``_SHOWN_CHARS``), with their counts."""

    def as_dict(self) -> dict[str, Any]:
        """JSON shape: ``map``, ``map_all_notes``, ``notes`` (what MAP, P@k and R@k average over),
        ``gold_notes``, ``gold_notes_without_predictions``, ``p@k``, ``r@k``, ``micro_*``, ``macro_*``,
        ``gold_rows``, ``duplicate_gold_rows``, ``invalid_gold_rows``, ``invalid_gold_codes``, details."""
        out: dict[str, Any] = self.ranking.as_dict()
        out |= {f"micro_{name}": v for name, v in self.micro.items()}
        out |= {f"macro_{name}": v for name, v in self.macro.items()}
        out["chapters"] = self.chapters
        out["top_false_positives"] = [vars(c) for c in self.false_positives]
        out["top_missed"] = [vars(c) for c in self.missed]
        out["pr_curve"] = self.pr_curve
        out["calibration"] = self.calibration
        out |= {"gold_rows": self.gold_rows, "duplicate_gold_rows": self.duplicate_gold_rows,
                "invalid_gold_rows": self.invalid_gold_rows,
                "invalid_gold_codes": [{"code": c.code, "count": c.count} for c in self.invalid_gold]}
        return out


def _ranked(predictions: pl.DataFrame, gold_keys: pl.DataFrame) -> pl.DataFrame:
    """One row per (note, key) in rank order, repeats dropped, ``position`` renumbered, ``is_gold`` marked."""
    return (
        predictions.sort(NOTE_ID, RANK)
        .unique(subset=[NOTE_ID, KEY], keep="first", maintain_order=True)
        .with_columns(pl.int_range(1, pl.len() + 1).over(NOTE_ID).alias(_POS))
        .join(gold_keys.with_columns(pl.lit(True).alias(_GOLD)), on=[NOTE_ID, KEY], how="left")
        .with_columns(pl.col(_GOLD).fill_null(False))
    )


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


def _invalid_gold(scored: pl.DataFrame, is_valid: Callable[[str], bool] | None, *, n: int) -> tuple[int, list[CodeCount]]:
    """How many of the ``scored`` gold rows (one per note and key) have a code that ``is_valid`` refuses,
    and the ``n`` most frequent such codes as written."""
    if is_valid is None:
        return 0, []
    refused = [key for key in scored.get_column(KEY).unique() if not is_valid(key)]
    rows = scored.filter(pl.col(KEY).is_in(refused))
    counts = rows.group_by(CODE).len().sort(["len", CODE], descending=[True, False]).head(n)
    shown = [CodeCount(code=code if len(code) <= _SHOWN_CHARS else f"{code[:_SHOWN_CHARS]}…", count=count, description=None)
             for code, count in counts.iter_rows()]
    return rows.height, shown


def _chapters(confusion: pl.DataFrame, chapter: Callable[[str], str]) -> list[dict[str, Any]]:
    totals = (
        confusion.with_columns(pl.col(KEY).map_elements(chapter, return_dtype=pl.String).alias("chapter"))
        .group_by("chapter")
        .agg(pl.col("tp").sum(), pl.col("fp").sum(), pl.col("fn").sum())
        .sort(pl.col("chapter").str.zfill(3))  # CM chapters are numbers: 2 before 10
    )
    return [
        {"chapter": name, "gold": tp + fn, "tp": tp, "fp": fp, "fn": fn, **prf(tp, fp, fn)}
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
        curve.append({"threshold": threshold, **prf(tp, kept.height - tp, n_gold - tp)})
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
    scored_gold = gold.with_columns(code_key()).unique([NOTE_ID, KEY], keep="first", maintain_order=True)
    gold_keys = scored_gold.select(NOTE_ID, KEY)
    invalid_rows, invalid = _invalid_gold(scored_gold, is_valid, n=top)
    ranked = _ranked(predictions, gold_keys)
    by_note = ranked.group_by(NOTE_ID, maintain_order=True).agg(pl.col(KEY))
    truth = gold_keys.group_by(NOTE_ID).agg(pl.col(KEY))
    confusion = _confusion(ranked, gold_keys)
    per_code = [prf(tp, fp, fn) for tp, fp, fn in confusion.select("tp", "fp", "fn").iter_rows()]
    macro = {name: sum(c[name] for c in per_code) / len(per_code) if per_code else 0.0 for name in ("precision", "recall", "f1")}
    return SystemAudit(
        ranking=ranking_scores(dict(by_note.iter_rows()), dict(truth.iter_rows()), is_valid=is_valid, ks=ks),
        micro=prf(*(int(confusion[c].sum()) for c in ("tp", "fp", "fn"))),
        macro=macro,
        chapters=_chapters(confusion, chapter),
        false_positives=_top(confusion, "fp", describe=describe, display=display, n=top),
        missed=_top(confusion, "fn", describe=describe, display=display, n=top),
        pr_curve=_pr_curve(ranked, gold_keys.height),
        calibration=_calibration(ranked),
        gold_rows=gold.height,
        duplicate_gold_rows=gold.height - gold_keys.height,
        invalid_gold_rows=invalid_rows,
        invalid_gold=invalid,
    )


@dataclass(frozen=True)
class AuditOutcome:
    """The audit in ``--json`` shape (keyed by system, plus ``llm`` when the run's manifest has it) and a text summary."""

    results: dict[str, Any]
    lines: tuple[str, ...]


def read_predictions(path: Path, *, table: pa.Table | None = None) -> pl.DataFrame:
    """The columns of a predictions parquet that an audit reads, checked like every input and its rows
    like gold codes (``check_codes``); ``table``: rows already in memory, named ``path`` (``read_table``)."""
    frame = read_table(path, columns={NOTE_ID: "id", SYSTEM: "system", CODE: "code"}, what="predictions",
                       typed={RANK: "integer", SCORE: "number", ABOVE_THRESHOLD: "boolean"},
                       optional=[DESCRIPTION, SOURCE, *EVIDENCE], table=table)
    return check_codes(frame, path)


@dataclass(frozen=True)
class ValidCodes:
    """What counts as a valid code for MAP: the release, the run's code list, the model's truncation levels."""

    code_list: Path | None
    origin: str
    """Where the code list came from: ``--codes-file``, ``the run's manifest`` or ``none``."""
    truncations: dict[str, tuple[int, ...]]

    def line(self) -> str:
        listed = f"code list {self.code_list} ({self.origin})" if self.code_list else "no code list"
        return f"valid codes: the ontology release, {listed}"

    def gate(self) -> AssignableCodes:
        """The assignable-code rule these valid codes define."""
        from coder.ontology import load_ontology  # the ontology tables load only when scoring

        return AssignableCodes(load_ontology(codes_file=self.code_list), truncations=self.truncations)

    def as_dict(self) -> dict[str, Any]:
        return {"code_list": str(self.code_list) if self.code_list else None, "origin": self.origin,
                "truncations": {system: list(lengths) for system, lengths in self.truncations.items()}}


def valid_codes(predictions: Path, manifest: dict[str, Any] | None, *, codes_file: Path | None) -> ValidCodes:
    """The valid codes of the run that wrote ``predictions`` (``manifest``): its code list, unless
    ``codes_file`` is given, and its model's truncation levels."""
    model = (manifest or {}).get("model", {})
    truncations = {system: tuple(lengths) for system, lengths in model.get("truncations", {}).items()}
    if codes_file is not None:
        return ValidCodes(codes_file, "--codes-file", truncations)
    listed = (manifest or {}).get("codes_file")
    if not listed:
        return ValidCodes(None, "the run's manifest" if manifest else "none", truncations)
    path = Path(listed["path"])
    if not path.is_file() or file_sha256(path) != listed["sha256"]:
        raise InputFileError(f"{manifest_path(predictions)}: the run validated codes with {path}, which is missing or has "
                             "changed since; pass that code list with --codes-file")
    return ValidCodes(path, "the run's manifest", truncations)


def _ontology_helpers(gate: AssignableCodes, system: str) -> dict[str, Callable]:
    ontology = gate.ontology

    def chapter(key: str) -> str:
        canonical = ontology.lookup(key, system).canonical
        return (ontology.chapter(canonical, system) if canonical else "") or "unknown"

    def is_valid(key: str) -> bool:
        canonical = ontology.lookup(key, system).canonical
        return canonical is not None and gate(canonical, system)

    return {
        "is_valid": is_valid,
        "chapter": chapter,
        "describe": lambda key: ontology.lookup(key, system).description or None,
        "display": lambda key: ontology.lookup(key, system).canonical or key,
    }


def audit_frames(
    predictions: pl.DataFrame, gold: pl.DataFrame, *, ks: Sequence[int], gate: AssignableCodes | None = None,
    sources: tuple[str, str] = ("the predictions", "the gold codes"),
) -> dict[str, Any]:
    """Per system: every metric, over the notes that appear in ``gold``; predicted notes that are not
    in ``gold`` are ignored and counted (``predicted_notes_not_in_gold``). ``gate`` decides which
    codes are valid for MAP (default: every code).

    InputFileError, naming ``sources`` (predictions, gold), when no predicted note is in ``gold``
    (an empty file, another night's notes): every metric would be 0 and say nothing."""
    audited = gold.get_column(NOTE_ID).unique()
    predicted = predictions.get_column(NOTE_ID).unique()
    if not predicted.is_in(audited.implode()).any():
        raise InputFileError(f"{sources[0]}: no predicted note is in {sources[1]} ({predicted.len()} predicted notes, "
                             f"{audited.len()} gold notes, 0 in common); give the gold codes of the notes that were predicted")
    in_gold = pl.col(NOTE_ID).is_in(audited.implode())
    present = set(gold.get_column(SYSTEM)) | set(predictions.get_column(SYSTEM))
    results = {}
    for system in (s for s in SYSTEMS if s in present):
        helpers = _ontology_helpers(gate, system) if gate is not None else {}
        rows = predictions.filter(pl.col(SYSTEM) == system)
        audit = audit_system(rows.filter(in_gold), gold.filter(pl.col(SYSTEM) == system), ks=ks, **helpers)
        results[system] = audit.as_dict() | {"predicted_notes_not_in_gold": rows.filter(~in_gold)[NOTE_ID].n_unique()}
    return results


def _summary_lines(results: dict[str, Any]) -> tuple[str, ...]:
    lines = []
    for system in (s for s in SYSTEMS if s in results):
        result = results[system]
        at_k = " ".join(f"{key.upper()} {value:.3f}" for key, value in result.items() if key[:2] in ("p@", "r@"))
        lines.append(
            f"{system}: {result['notes']} notes, MAP {result['map']:.3f} (over all {result['gold_notes']} gold notes: "
            f"{result['map_all_notes']:.3f}), {at_k}, micro F1 {result['micro_f1']:.3f}, macro F1 {result['macro_f1']:.3f}, "
            f"{result['predicted_notes_not_in_gold']} predicted notes not in the gold ignored"
        )
        lines += _questioned_gold(system, result)
    return tuple(lines)


def _questioned_gold(system: str, result: dict[str, Any]) -> list[str]:
    """The summary line on the system's duplicated gold rows and invalid gold codes; none when there are none."""
    said = []
    if result["invalid_gold_rows"]:
        codes = ", ".join(f"{c['code']} ({c['count']})" for c in result["invalid_gold_codes"][:5])
        more = ", ..." if result["invalid_gold_rows"] > sum(c["count"] for c in result["invalid_gold_codes"][:5]) else ""
        said.append(f"{result['invalid_gold_rows']} gold codes are not valid codes, kept and scored as missed as CodiEsp's "
                    f"script keeps them: {codes}{more}")
    if result["duplicate_gold_rows"]:
        said.append(f"{result['duplicate_gold_rows']} gold rows repeat an earlier row's note and code, scored once")
    return [f"{system} gold: {'; '.join(said)}"] if said else []


def _reviewed(paths: Sequence[Path], *, ks: Sequence[int]) -> AuditOutcome:
    """Precision@k of a review CSV or of `coder review` decision files, and the decision files' agreement."""
    csv = [path for path in paths if path.suffix.lower() == ".csv"]
    if csv and len(paths) > 1:
        raise UsageError("--reviewed takes one review CSV, or one or more DECISIONS.parquet files of `coder review`")
    results = score_review(paths[0], ks=ks) if csv else score_decisions(paths, ks=ks)
    per_file = results["precision"] if len(paths) > 1 and not csv else {"": results}
    lines = [
        f"{name + ': ' if name else ''}{system}: {r['judged']} codes judged on {r['notes']} notes"
        + (f", {r['added']} added" if r.get("added") else "") + "; "
        + ", ".join(f"{key.upper()} {v['precision'] if v['precision'] is not None else float('nan'):.3f} "
                    f"[{v['ci95_low']:.3f}, {v['ci95_high']:.3f}]" for key, v in r.items() if key.startswith("p@"))
        for name, scores in per_file.items() for system, r in scores.items()
    ]
    lines += [f"{pair}: {system}: {a['codes']} codes on {a['notes']} notes reviewed by both; agreement "
              f"{a['agreement']:.3f}, Cohen's kappa " + (f"{a['kappa']:.3f}" if a["kappa"] is not None else "undefined")
              for pair, systems in results.get("agreement", {}).items() for system, a in systems.items()]
    return AuditOutcome(results=results, lines=tuple(lines))


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
    reviewed: Sequence[Path] = (),
) -> AuditOutcome:
    """Score ``predictions`` against ``gold``; optionally write an HTML ``report`` and a review sample to ``export``.

    With ``reviewed`` (a review CSV with verdicts, or the decision files of `coder review`) only the coders'
    precision@k is computed, and with several decision files their agreement.
    """
    if not ks or min(ks) < 1:
        raise UsageError(f"--k needs positive integers, got {list(ks)}")
    if reviewed:
        if predictions is not None or gold is not None:
            raise UsageError("--reviewed scores a filled-in review on its own; drop PREDICTIONS and --gold")
        return _reviewed(reviewed, ks=ks)
    if predictions is None:
        raise UsageError("give the PREDICTIONS parquet written by `coder predict` (or --reviewed REVIEW.csv)")
    if (sample is None) != (export is None):
        raise UsageError("--sample N and --export REVIEW.csv go together")
    if report is not None and gold is None:
        raise UsageError("--report needs --gold")
    if gold is None and sample is None:
        raise UsageError("nothing to do: pass --gold GOLD.parquet, or --sample N --export REVIEW.csv")
    frame = read_predictions(predictions)
    truth = read_codes(gold) if gold is not None else None
    manifest = read_manifest(manifest_path(predictions))
    results: dict[str, Any] = {}
    lines: list[str] = []
    if truth is not None:
        valid = valid_codes(predictions, manifest, codes_file=codes_file)
        results = audit_frames(frame, truth, ks=ks, gate=valid.gate(), sources=(str(predictions), str(gold)))
        lines += [*_summary_lines(results), valid.line()]
        results["valid_codes"] = valid.as_dict()
    if manifest and manifest.get("llm") is not None:
        results["llm"] = manifest["llm"]
    if report is not None:
        write_text(report, render_report(results, title=f"coder audit: {predictions.name}"))
        lines.append(f"report: {report}")
    if export is not None and sample is not None:
        review = review_sample(frame, n=sample, seed=seed, top=review_top, gold=truth)
        write_text(export, review.write_csv())
        lines.append(f"review sample: {review.get_column(NOTE_ID).n_unique()} notes, {review.height} codes in {export}")
    return AuditOutcome(results=results, lines=tuple(lines))
