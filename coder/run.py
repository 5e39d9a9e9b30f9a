"""A `coder predict` run: plan the inputs, have an engine code every batch, combine the parts, write the manifest.

``run_batches`` does the bookkeeping; an engine (``coder.engines.local``, ``coder.engines.processes`` or ``coder.engines.ray``)
reads, screens, codes (``coder.pipeline.code_batch``) and writes each batch with
``code_and_write``. ``coder.predict.predict_notes`` plans the inputs (``plan_run``), loads the model and starts a run.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import polars as pl

from coder.version import __version__
from coder.errors import UsageError
from coder.hashing import file_sha256
from coder.io.atomic import write_json
from coder.io.outputs import RunOutputs
from coder.io.parts import PartsFolder
from coder.io.progress import Progress
from coder.io.read import DEFAULT_MAX_NOTE_CHARS, InputPlan, NoteBatch, bound_notes, check_unchanged, plan_inputs
from coder.io.screen import RowScreen, unprocessable
from coder.llm.vote import LLMStage, manifest_section, summary_line
from coder.pipeline import CodedBatch, code_batch
from coder.schema import NOTE_ID, PREDICTION_SCHEMA, QUARANTINE_SCHEMA

if TYPE_CHECKING:
    from coder.model.load import Model

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 256
_QUARANTINED = "quarantined."
_SECONDS = "seconds."
_LONG = "over_max_note_chars"


@dataclass(frozen=True)
class PredictOptions:
    """How a run reads, scores and reports; the model and the ontology come separately."""

    id_column: str = NOTE_ID
    """Input column with the note id."""
    text_column: str | None = None
    """Input column read as the model's primary text (None: the column the model names)."""
    top_k: int = 50
    """Codes kept per note and system."""
    threshold_only: bool = False
    """Keep only codes at or above their decision threshold."""
    batch_size: int = DEFAULT_BATCH_SIZE
    """Notes per batch: the unit of reading, scoring, and resuming."""
    precision: str = "auto"
    """ONNX variant to run (``coder.model.scorer.PRECISIONS``): auto is int8 on CPU, fp16 on a GPU."""
    quarantine: Path | None = None
    """Quarantine parquet (None: ``<out stem>.quarantine.parquet`` beside the output)."""
    resume: bool = False
    """Continue the interrupted run in ``<out>.parts`` if there is one."""
    quiet: bool = False
    """No progress bar or periodic progress lines."""
    max_note_chars: int = DEFAULT_MAX_NOTE_CHARS
    """Characters of each note's text that are coded: a longer note is coded on its first ``max_note_chars``
    characters by every stage (evidence offsets point into them) and counted as ``truncated`` (and as
    ``over_max_note_chars`` in the manifest), so one huge note cannot take the machine's memory."""
    llm: Mapping[str, Any] = field(default_factory=dict)
    """LLM stage settings given for this run (``coder.llm.settings.LLMSettings`` field names, e.g. ``backend``, ``weight``);
    they override the model config's ``llm`` entry. Empty and no such entry: the stage is off."""

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.batch_size < 1 or self.max_note_chars < 1:
            raise UsageError(f"--top-k, --batch-size and --max-note-chars must be at least 1, "
                             f"got {self.top_k}, {self.batch_size} and {self.max_note_chars}")


@dataclass(frozen=True)
class RunSummary:
    """What a run did; the same counts are in the manifest."""

    out: Path
    quarantine: Path
    manifest: Path
    input_rows: int
    notes_coded: int
    notes_without_codes: int
    codes_written: int
    truncated: int
    """Notes coded on their beginning only: longer than ``max_note_chars``, or than PLM-ICD's chunks."""
    quarantined: Mapping[str, int] = field(default_factory=dict)
    skipped_columns: tuple[str, ...] = ()
    seconds: float = 0.0
    resumed_batches: int = 0
    recomputed_batches: int = 0
    """Finished batches of the interrupted run that were missing or damaged, and were coded again."""
    llm: Mapping[str, Any] = field(default_factory=dict)
    """The manifest's ``llm`` section."""
    over_max_note_chars: int = 0
    """Notes longer than ``max_note_chars``, cut to it (counted in ``truncated`` too)."""
    max_note_chars: int = DEFAULT_MAX_NOTE_CHARS

    def lines(self) -> list[str]:
        """A few lines for a person: counts only, never note text."""
        quarantined = sum(self.quarantined.values())
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.quarantined.items())) or "none"
        long = f", {self.over_max_note_chars} of them cut at {self.max_note_chars} characters" if self.over_max_note_chars else ""
        out = [
            f"{self.input_rows} input rows: {self.notes_coded} notes coded "
            f"({self.notes_without_codes} without codes, {self.truncated} truncated{long}), {quarantined} quarantined ({reasons})",
            f"{self.codes_written} codes written to {self.out}",
            f"quarantine: {self.quarantine}; manifest: {self.manifest}",
        ]
        if self.resumed_batches or self.recomputed_batches:
            again = f", {self.recomputed_batches} damaged ones were coded again" if self.recomputed_batches else ""
            out.append(f"resumed: {self.resumed_batches} batches were already done{again}")
        if self.skipped_columns:
            out.append(f"input lacks {', '.join(self.skipped_columns)}: those model components were skipped")
        if line := summary_line(self.llm):
            out.append(line)
        return out


@dataclass(frozen=True)
class EngineReport:
    """What an engine did, for the summary and the manifest."""

    batches: int
    """Batches in the run, those done before a resume included."""
    fresh_rows: int
    """Input rows of the batches coded by this run."""
    stage_seconds: Mapping[str, float]
    """Seconds per pipeline stage over this run's batches, summed over workers that run in parallel."""
    execution_provider: str
    precision: str
    """The ONNX variant the batches ran on (several, comma-separated, if workers differed)."""
    engine: Mapping[str, Any]
    """The manifest's ``engine`` section: which engine coded the batches, and how."""


class Engine(Protocol):
    """Codes and writes (``code_and_write``) every batch of ``plan`` not in ``done``, adding its counts to ``done``."""

    def __call__(self, plan: InputPlan, *, model: Model, parts: PartsFolder, done: dict[int, dict[str, Any]],
                 progress: Progress, options: PredictOptions, llm: LLMStage | None) -> EngineReport: ...


@dataclass(frozen=True)
class BatchOutput:
    """What a batch of input rows became: predictions, quarantined rows, and its counts."""

    predictions: pl.DataFrame
    quarantine: pl.DataFrame
    counts: dict[str, Any]


def process_batch(model: Model, batch: NoteBatch, *, screen: RowScreen, top_k: int, threshold_only: bool,
                  llm: LLMStage | None = None, max_note_chars: int = DEFAULT_MAX_NOTE_CHARS) -> BatchOutput:
    """Screen ``batch`` (rows it cannot code go to quarantine with a reason), cut notes longer than
    ``max_note_chars`` (``coder.io.read.bound_notes``) and code the rest."""
    good, bad = screen.split(batch, text_column=model.scorer.text_column)
    good, long = bound_notes(good, columns=model.text_columns, max_chars=max_note_chars)
    coded = CodedBatch(predictions=PREDICTION_SCHEMA.to_frame())  # a batch whose rows were all quarantined
    if not good.is_empty():
        coded = code_batch(model, good.drop("row"), top_k=top_k, threshold_only=threshold_only, llm=llm)
    if coded.unprocessable:
        bad = pl.concat([bad, unprocessable(good, coded.unprocessable, file=batch.file)])
    notes = good.height - len(coded.unprocessable)
    counts = {
        "input_rows": batch.frame.height,
        "notes_coded": notes,
        "notes_without_codes": notes - coded.predictions.get_column(NOTE_ID).n_unique(),
        "codes_written": coded.predictions.height,
        "truncated": len({*coded.truncated, *long}),
        _LONG: len(long),
        **coded.counts,
        **{f"{_QUARANTINED}{reason}": n for reason, n in Counter(bad.get_column("reason")).items()},
    }
    return BatchOutput(coded.predictions, bad, counts)


def code_and_write(model: Model, batch: NoteBatch, *, screen: RowScreen, parts: PartsFolder, options: PredictOptions,
                   llm: LLMStage | None = None) -> dict[str, Any]:
    """``process_batch``, then store the batch's parts with what it ran on; return its counts."""
    output = process_batch(model, batch, screen=screen, top_k=options.top_k, threshold_only=options.threshold_only, llm=llm,
                           max_note_chars=options.max_note_chars)
    parts.write_batch(batch.index, predictions=output.predictions, quarantine=output.quarantine, counts=output.counts,
                      ran_on=f"{model.execution_provider} {model.precision}")
    return output.counts


def stage_seconds(counts: Mapping[str, Any]) -> dict[str, float]:
    """The ``seconds.<stage>`` entries of summed batch counts, by stage."""
    return {key.removeprefix(_SECONDS): float(value) for key, value in counts.items() if key.startswith(_SECONDS)}


def _fingerprint(plan: InputPlan, model: Model, *, options: PredictOptions, llm: LLMStage | None) -> dict[str, Any]:
    """Everything that must match for ``--resume`` to continue a run rather than mix two; what the batches
    run on (execution provider and precision: the Ray engine's workers, not this model) is checked per batch
    (``PartsFolder.write_batch``)."""
    fingerprint = {
        "inputs": [{"path": str(f.path.resolve()), "sha256": f.sha256} for f in plan.files],
        "model": model.hash,
        "model_components": dict(model.components),
        "id_column": plan.id_column,
        "columns": dict(plan.columns),
        "batch_size": options.batch_size,
        "top_k": options.top_k,
        "threshold_only": options.threshold_only,
        "max_note_chars": options.max_note_chars,
        "code_list_sha256": file_sha256(model.code_list) if model.code_list else None,
    }
    if llm is not None:  # only when on, so runs without the stage resume as before
        fingerprint["llm"] = llm.public_settings()
    return fingerprint


def _sum_counts(done: Mapping[int, Mapping[str, Any]]) -> Counter:
    total: Counter = Counter()
    for counts in done.values():
        for key, value in counts.items():
            total[key] += value
    return total


def plan_run(source: str | Path, *, text_columns: tuple[str, ...], options: PredictOptions) -> InputPlan:
    """The inputs of a run on ``source`` for a model reading ``text_columns``, every file checked
    (``coder.io.read.plan_inputs``): cheap next to loading the model, so done first."""
    return plan_inputs(source, id_column=options.id_column, text_columns=text_columns, primary_column=options.text_column)


def run_batches(plan: InputPlan, *, model: Model, outputs: RunOutputs, engine: Engine,
                options: PredictOptions = PredictOptions(), llm: LLMStage | None = None,
                model_path: Path | None = None) -> RunSummary:
    """Code every note of ``plan`` (``plan_run``) with ``model`` and write ``outputs`` (claimed with
    ``coder.io.outputs.claim_outputs``: checked, and locked for this run).

    Input rows = notes coded + rows quarantined, always. ``engine`` codes the batches
    (``coder.engines.local.code_locally``, ``coder.engines.processes.ProcessesEngine`` or ``coder.engines.ray.RayEngine``).
    An input file that changed since it was planned stops the run before anything is published; the parts stay
    for ``--resume``."""
    started = datetime.now(UTC)
    clock = time.monotonic()
    out, quarantine = outputs.predictions, outputs.quarantine
    parts = PartsFolder(out)
    resumed = parts.start(fingerprint=_fingerprint(plan, model, options=options, llm=llm), resume=options.resume)
    done = dict(resumed.done)
    resumed_batches = len(done)
    progress = Progress(total=plan.total_rows, quiet=options.quiet)
    report = engine(plan, model=model, parts=parts, done=done, progress=progress, options=options, llm=llm)
    progress.close()
    for file in plan.files:
        check_unchanged(file)
    parts.combine("predictions", schema=PREDICTION_SCHEMA, dest=out, batches=report.batches)
    parts.combine("quarantine", schema=QUARANTINE_SCHEMA, dest=quarantine, batches=report.batches)
    totals = _sum_counts(done)
    seconds = time.monotonic() - clock
    summary = RunSummary(
        out=out,
        quarantine=quarantine,
        manifest=outputs.manifest,
        input_rows=totals["input_rows"],
        notes_coded=totals["notes_coded"],
        notes_without_codes=totals["notes_without_codes"],
        codes_written=totals["codes_written"],
        truncated=totals["truncated"],
        quarantined={k.removeprefix(_QUARANTINED): v for k, v in sorted(totals.items()) if k.startswith(_QUARANTINED)},
        skipped_columns=plan.skipped_columns,
        seconds=seconds,
        resumed_batches=resumed_batches,
        recomputed_batches=len(resumed.recomputed),
        llm=manifest_section(llm, totals),
        over_max_note_chars=totals[_LONG],
        max_note_chars=options.max_note_chars,
    )
    model_seconds = sum(value for stage, value in report.stage_seconds.items() if stage != "llm")
    manifest = {
        "coder_version": __version__,
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "inputs": [{"path": str(f.path), "rows": f.rows, "sha256": f.sha256} for f in plan.files],
        "skipped_files": [str(path) for path in plan.skipped_files],
        "id_column": plan.id_column,
        "text_columns": dict(plan.columns),
        "skipped_components": list(plan.skipped_columns),
        "model": {"name": model.config.name, "path": str(model_path or model.folder), "hash": model.hash,
                  "components": dict(model.components), "execution_provider": report.execution_provider,
                  "precision": report.precision, "truncations": dict(model.config.truncations)},
        "engine": dict(report.engine),
        "ontology": dict(model.ontology.release),
        "codes_file": {"path": str(model.code_list.resolve()), "sha256": file_sha256(model.code_list)} if model.code_list else None,
        "options": {"top_k": options.top_k, "threshold_only": options.threshold_only, "batch_size": options.batch_size,
                    "max_note_chars": options.max_note_chars},
        "counts": {
            "input_rows": summary.input_rows,
            "notes_coded": summary.notes_coded,
            "notes_without_codes": summary.notes_without_codes,
            "quarantined": dict(summary.quarantined),
            "truncated": summary.truncated,
            _LONG: summary.over_max_note_chars,
            "codes_written": summary.codes_written,
            "skipped_components": len(plan.skipped_columns),
        },
        "timing": {
            "seconds": round(seconds, 3),
            "resumed_batches": resumed_batches,
            "resume_recomputed_batches": len(resumed.recomputed),
            "notes_this_run": report.fresh_rows,
            "notes_per_s": round(report.fresh_rows / seconds, 3) if seconds else None,
            "model_seconds": round(model_seconds, 3),
            "model_notes_per_s": round(report.fresh_rows / model_seconds, 3) if model_seconds else None,
            "stage_seconds": {stage: round(value, 3) for stage, value in report.stage_seconds.items()},
        },
        "outputs": {"predictions": str(out), "quarantine": str(quarantine)},
        "llm": dict(summary.llm),
    }
    write_json(summary.manifest, manifest)
    parts.remove()
    log.info("%d notes in %.1f s (%.1f notes/s)", report.fresh_rows, seconds, report.fresh_rows / seconds if seconds else 0.0)
    return summary
