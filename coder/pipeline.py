"""The nightly batch, end to end: read -> screen -> score -> LLM votes (optional) -> write parts -> combine -> manifest.

``predict_notes`` loads the model and the ontology and calls ``run_batches``, which takes any
object with the Predictor's ``predict`` and attributes, so the mechanics are testable without a model.
The optional LLM stage wraps the predictor (``coder.llm_step.LLMVoting``), so every engine runs it the same way.
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

import coder
from coder.errors import UsageError
from coder.hashing import file_sha256
from coder.io.manifest import manifest_path, write_json
from coder.io.progress import Progress
from coder.io.screen import RowScreen, quarantine_path, unprocessable
from coder.io.read import InputPlan, iter_batches, plan_inputs, resolve_inputs
from coder.io.parts import PartsFolder
from coder.llm_step import LLMVoting, llm_manifest, llm_summary_line, resolve_llm_settings
from coder.schema import NOTE_ID, PREDICTION_SCHEMA, QUARANTINE_SCHEMA

if TYPE_CHECKING:
    from coder.llm.backends import Backend

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 256
_QUARANTINED = "quarantined."


class BatchPredictor(Protocol):
    """What the pipeline needs from ``coder.model.scorer.Predictor``."""

    text_columns: tuple[str, ...]
    execution_provider: str
    precision: str
    model_hash: str

    def predict(self, batch: pl.DataFrame, *, top_k: int = 50, threshold_only: bool = False) -> Any: ...


@dataclass(frozen=True)
class ScoredBatch:
    """A batch's scores in the shape of ``coder.model.scorer.BatchResult``, plus the LLM stage's counts."""

    predictions: pl.DataFrame
    """PREDICTION_SCHEMA rows."""
    truncated: tuple[str, ...] = ()
    unprocessable: tuple[str, ...] = ()
    llm_counts: Mapping[str, int | float] = field(default_factory=dict)
    """The LLM stage's counts for this batch (``llm.``-prefixed), summed over batches like the others."""


def score_batch(predictor: BatchPredictor, good: pl.DataFrame, *, options: PredictOptions) -> Any:
    """``predictor.predict`` on the codable rows of a batch; a batch whose rows were all quarantined is not scored."""
    if good.is_empty():
        return ScoredBatch(predictions=PREDICTION_SCHEMA.to_frame())
    return predictor.predict(good.drop("row"), top_k=options.top_k, threshold_only=options.threshold_only)


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
    quarantined: Mapping[str, int] = field(default_factory=dict)
    skipped_columns: tuple[str, ...] = ()
    seconds: float = 0.0
    resumed_batches: int = 0
    llm: Mapping[str, Any] = field(default_factory=dict)
    """The manifest's ``llm`` section."""

    def lines(self) -> list[str]:
        """A few lines for a person: counts only, never note text."""
        quarantined = sum(self.quarantined.values())
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.quarantined.items())) or "none"
        out = [
            f"{self.input_rows} input rows: {self.notes_coded} notes coded "
            f"({self.notes_without_codes} without codes, {self.truncated} truncated), {quarantined} quarantined ({reasons})",
            f"{self.codes_written} codes written to {self.out}",
            f"quarantine: {self.quarantine}; manifest: {self.manifest}",
        ]
        if self.resumed_batches:
            out.append(f"resumed: {self.resumed_batches} batches were already done")
        if self.skipped_columns:
            out.append(f"input lacks {', '.join(self.skipped_columns)}: those model components were skipped")
        if line := llm_summary_line(self.llm):
            out.append(line)
        return out


def _fingerprint(
    plan: InputPlan, predictor: BatchPredictor, *, options: PredictOptions, codes_sha256: str | None
) -> dict[str, Any]:
    """Everything that must match for ``--resume`` to continue a run rather than mix two."""
    fingerprint = {
        "inputs": [{"path": str(f.path.resolve()), "sha256": f.sha256} for f in plan.files],
        "model_hash": predictor.model_hash,
        "id_column": plan.id_column,
        "columns": dict(plan.columns),
        "batch_size": options.batch_size,
        "top_k": options.top_k,
        "threshold_only": options.threshold_only,
        "precision": options.precision,
        "codes_file_sha256": codes_sha256,
    }
    if isinstance(predictor, LLMVoting):  # only when on, so runs without the stage resume as before
        fingerprint["llm"] = predictor.public_settings()
    return fingerprint


def _sum_counts(done: Mapping[int, Mapping[str, Any]]) -> Counter:
    total: Counter = Counter()
    for counts in done.values():
        for key, value in counts.items():
            total[key] += value
    return total


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
    llm: Mapping[str, Any] = field(default_factory=dict)
    """LLM stage settings given for this run (``coder.llm.LLMSettings`` field names, e.g. ``backend``, ``weight``);
    they override the model config's ``llm`` entry. Empty and no such entry: the stage is off."""

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.batch_size < 1:
            raise UsageError(f"--top-k and --batch-size must be at least 1, got {self.top_k} and {self.batch_size}")


@dataclass(frozen=True)
class Scored:
    """What scoring the batches did, for the summary and the manifest."""

    batches: int
    """Batches in the run, those done before a resume included."""
    fresh_rows: int
    """Input rows of the batches scored by this run."""
    model_seconds: float
    """Time spent in ``predict``, summed over workers that run in parallel."""
    execution_provider: str
    precision: str
    """The ONNX variant the batches ran on (several, comma-separated, if workers differed)."""
    engine: Mapping[str, Any]
    """The manifest's ``engine`` section: which engine scored the batches, and how."""


class BatchExecutor(Protocol):
    """Scores and writes (``write_batch``) every batch of ``plan`` not in ``done``, adding its counts to ``done``."""

    def __call__(
        self,
        plan: InputPlan,
        *,
        predictor: BatchPredictor,
        parts: PartsFolder,
        done: dict[int, dict[str, Any]],
        progress: Progress,
        options: PredictOptions,
    ) -> Scored: ...


def score_locally(
    plan: InputPlan,
    *,
    predictor: BatchPredictor,
    parts: PartsFolder,
    done: dict[int, dict[str, Any]],
    progress: Progress,
    options: PredictOptions,
) -> Scored:
    """The local engine: one batch after another in this process."""
    primary = predictor.text_columns[0]
    screen = RowScreen()
    model_seconds = 0.0
    fresh_rows = 0
    batches = 0
    for batch in iter_batches(plan, batch_size=options.batch_size):
        batches += 1
        good, bad = screen.split(batch, text_column=primary)  # also for done batches: it remembers their ids
        if batch.index not in done:
            tick = time.monotonic()
            result = score_batch(predictor, good, options=options)
            model_seconds += time.monotonic() - tick
            done[batch.index] = write_batch(parts, batch.index, good=good, bad=bad, result=result, file=batch.file)
            fresh_rows += batch.frame.height
        progress.update(batch.frame.height)
    return Scored(
        batches=batches,
        fresh_rows=fresh_rows,
        model_seconds=model_seconds,
        execution_provider=predictor.execution_provider,
        precision=predictor.precision,
        engine={"name": "local"},
    )


def run_batches(
    source: str | Path,
    *,
    predictor: BatchPredictor,
    out: Path,
    options: PredictOptions = PredictOptions(),
    codes_file: Path | None = None,
    manifest_extra: Mapping[str, Any] | None = None,
    executor: BatchExecutor = score_locally,
) -> RunSummary:
    """Code every note of ``source`` with ``predictor`` and write ``out``, its quarantine and manifest.

    Input rows = notes coded + rows quarantined, always. ``codes_file`` is recorded (and must match
    on resume); ``manifest_extra`` adds manifest sections (model name, ontology release).
    ``executor`` scores the batches: ``score_locally`` here, or another engine (``coder.engines.ray``).
    """
    started = datetime.now(UTC)
    clock = time.monotonic()
    quarantine = options.quarantine or quarantine_path(out)
    plan = plan_inputs(
        source, id_column=options.id_column, text_columns=predictor.text_columns, primary_column=options.text_column
    )
    codes_sha256 = file_sha256(codes_file) if codes_file else None
    parts = PartsFolder(out)
    fingerprint = _fingerprint(plan, predictor, options=options, codes_sha256=codes_sha256)
    done = parts.start(fingerprint=fingerprint, resume=options.resume)
    resumed_batches = len(done)
    progress = Progress(total=plan.total_rows, quiet=options.quiet)
    scored = executor(plan, predictor=predictor, parts=parts, done=done, progress=progress, options=options)
    progress.close()
    parts.combine("predictions", schema=PREDICTION_SCHEMA, dest=out, batches=scored.batches)
    parts.combine("quarantine", schema=QUARANTINE_SCHEMA, dest=quarantine, batches=scored.batches)
    totals = _sum_counts(done)
    seconds = time.monotonic() - clock
    summary = RunSummary(
        out=out,
        quarantine=quarantine,
        manifest=manifest_path(out),
        input_rows=totals["input_rows"],
        notes_coded=totals["notes_coded"],
        notes_without_codes=totals["notes_without_codes"],
        codes_written=totals["codes_written"],
        truncated=totals["truncated"],
        quarantined={k.removeprefix(_QUARANTINED): v for k, v in sorted(totals.items()) if k.startswith(_QUARANTINED)},
        skipped_columns=plan.skipped_columns,
        seconds=seconds,
        resumed_batches=resumed_batches,
        llm=llm_manifest(predictor, totals),
    )
    manifest = {
        "coder_version": coder.__version__,
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "inputs": [{"path": str(f.path), "rows": f.rows, "sha256": f.sha256} for f in plan.files],
        "id_column": plan.id_column,
        "text_columns": dict(plan.columns),
        "skipped_components": list(plan.skipped_columns),
        "model": {"hash": predictor.model_hash, "execution_provider": scored.execution_provider, "precision": scored.precision},
        "engine": dict(scored.engine),
        "codes_file": {"path": str(codes_file), "sha256": codes_sha256} if codes_file else None,
        "options": {"top_k": options.top_k, "threshold_only": options.threshold_only, "batch_size": options.batch_size},
        "counts": {
            "input_rows": summary.input_rows,
            "notes_coded": summary.notes_coded,
            "notes_without_codes": summary.notes_without_codes,
            "quarantined": dict(summary.quarantined),
            "truncated": summary.truncated,
            "codes_written": summary.codes_written,
            "skipped_components": len(plan.skipped_columns),
        },
        "timing": {
            "seconds": round(seconds, 3),
            "resumed_batches": resumed_batches,
            "notes_this_run": scored.fresh_rows,
            "notes_per_s": round(scored.fresh_rows / seconds, 3) if seconds else None,
            "model_seconds": round(scored.model_seconds, 3),
            "model_notes_per_s": round(scored.fresh_rows / scored.model_seconds, 3) if scored.model_seconds else None,
        },
        "outputs": {"predictions": str(out), "quarantine": str(quarantine)},
        "llm": dict(summary.llm),
    }
    for section, content in (manifest_extra or {}).items():
        manifest[section] = {**manifest.get(section, {}), **content} if isinstance(content, Mapping) else content
    write_json(summary.manifest, manifest)
    parts.remove()
    log.info("%d notes in %.1f s (%.1f notes/s)", scored.fresh_rows, seconds, scored.fresh_rows / seconds if seconds else 0.0)
    return summary


def write_batch(
    parts: PartsFolder, index: int, *, good: pl.DataFrame, bad: pl.DataFrame, result: Any, file: Path
) -> dict[str, int]:
    """Store one scored batch with its quarantine rows; return its counts."""
    input_rows = good.height + bad.height
    if result.unprocessable:
        bad = pl.concat([bad, unprocessable(good, result.unprocessable, file=file)])
    predictions = result.predictions
    if predictions.schema != PREDICTION_SCHEMA:  # casting costs milliseconds per batch: only when needed
        predictions = predictions.select(PREDICTION_SCHEMA.names()).cast(PREDICTION_SCHEMA)
    coded = good.height - len(result.unprocessable)
    counts = {
        "input_rows": input_rows,
        "notes_coded": coded,
        "notes_without_codes": coded - predictions.get_column(NOTE_ID).n_unique(),
        "codes_written": predictions.height,
        "truncated": len(result.truncated),
        **getattr(result, "llm_counts", {}),  # only ScoredBatch has them, not the Predictor's BatchResult
        **{f"{_QUARANTINED}{reason}": n for reason, n in Counter(bad.get_column("reason")).items()},
    }
    parts.write_batch(index, predictions=predictions, quarantine=bad, counts=counts)
    return counts


def predict_notes(
    source: str | Path,
    *,
    out: Path,
    model: Path | None = None,
    device: str = "auto",
    codes_file: Path | None = None,
    options: PredictOptions = PredictOptions(),
    executor: BatchExecutor = score_locally,
    llm_backend: Backend | None = None,
) -> RunSummary:
    """``coder predict``: load the model (default ``coder.model.folder.default_model_path()``) and the ontology, run the batch.

    With another ``executor`` (``coder.engines.ray``) the model loaded here only describes the run.
    The LLM stage (``options.llm`` over the model config's ``llm`` entry) opens its backend once here,
    or uses ``llm_backend``; it runs with the local engine only.
    """
    resolve_inputs(source)  # a mistyped path fails before the model loads
    # Imported here: they pull in onnxruntime and the ontology, which the I/O mechanics do not need.
    from coder.model.folder import default_model_path, model_code_list
    from coder.ontology import load_ontology
    from coder.model.scorer import load_predictor

    model_path = model or default_model_path()
    codes_file = model_code_list(model_path, codes_file)  # the model's own list unless the user gives one; recorded below
    ontology = load_ontology(codes_file=codes_file)
    # codes the code list vouches for are written
    predictor = load_predictor(model_path, device=device, precision=options.precision, ontology=ontology)
    config = predictor.config
    llm = resolve_llm_settings(configured=getattr(config, "llm", None), given=options.llm)  # when the config has one
    if llm.enabled:
        if executor is not score_locally:
            raise UsageError(f"--llm {llm.backend} runs with --engine local only; drop --llm or the other engine")
        predictor = LLMVoting(predictor, settings=llm, ontology=ontology, backend=llm_backend)
    return run_batches(
        source,
        predictor=predictor,
        out=out,
        options=options,
        codes_file=codes_file,
        executor=executor,
        manifest_extra={
            "model": {"name": config.name, "path": str(model_path)},
            "ontology": dict(ontology.release),
        },
    )
