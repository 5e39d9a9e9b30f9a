"""A `coder predict` run: plan the inputs and the pending batches, fingerprint the run for ``--resume``,
map the batch worker over the pending batches through an engine, combine the parts, write the manifest.

``run_batches`` owns these steps; the worker (``coder.batches.BatchWorker``) reads, screens, codes
(``coder.pipeline.code_batch``) and writes one batch, and an engine (``coder.engines.local``,
``coder.engines.processes`` or ``coder.engines.ray``) only maps it. What the run records of its model
(``ModelRecord``) comes from the loaded model, or from its folder alone when the workers load it.
``coder.predict.predict_notes`` composes a run: check the inputs (``plan_run``), choose the engine, run.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any


from coder.version import __version__
from coder.batches import OVER_MAX_NOTE_CHARS, QUARANTINED, BatchResult, BatchWorker, Engine, plan_batches
from coder.errors import UsageError
from coder.hashing import file_sha256
from coder.io.atomic import write_json
from coder.io.outputs import RunOutputs
from coder.io.parts import PartsFolder
from coder.io.progress import Progress
from coder.io.read import DEFAULT_MAX_NOTE_CHARS, InputPlan, check_unchanged, plan_inputs
from coder.llm.vote import LLMStage, manifest_section, summary_line
from coder.model.folder import ModelConfig, component_hashes, model_hash
from coder.model.scorer import choose_precision, gpu_requested
from coder.ontology.codelist import read_code_list
from coder.ontology.sources import releases
from coder.schema import NOTE_ID, PREDICTION_SCHEMA, QUARANTINE_SCHEMA

if TYPE_CHECKING:
    from coder.assembly import Model

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 256
_SECONDS = "seconds."


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
class ModelRecord:
    """What a run records of its model: the manifest's ``model``, ``ontology`` and ``codes_file``
    sections and the model entries of the resume fingerprint. What the batches ran on (execution
    provider, precision) is the workers' to say (``coder.batches.BatchResult.ran_on``)."""

    name: str
    path: Path
    """The folder as the run was given it."""
    hash: str
    """sha256 of the config (``coder.model.folder.model_hash``)."""
    components: Mapping[str, str]
    """Component -> hash (``coder.model.folder.component_hashes``): what ``--resume`` compares."""
    truncations: Mapping[str, str]
    ontology: Mapping[str, str | None]
    """The ontology's release and code list (``coder.ontology.Ontology.release``)."""
    code_list: Path | None
    """The code list in force: ``--codes-file``, else the folder's own, else none."""

    @classmethod
    def of(cls, model: Model, *, path: Path | None = None) -> ModelRecord:
        """The record of a model loaded in this process (``path``: the folder as given, default the model's)."""
        return cls(name=model.config.name, path=path or model.folder, hash=model.hash, components=dict(model.components),
                   truncations=dict(model.config.truncations), ontology=dict(model.ontology.release),
                   code_list=model.code_list)

    @classmethod
    def read(cls, folder: Path, config: ModelConfig, *, device: str, precision: str, codes_file: Path | None) -> ModelRecord:
        """The record of the model in ``folder`` (its ``config``, read) that workers will load with these arguments,
        from its config and the code list alone: no model is loaded here. The precision asked for is checked against the folder's
        ONNX variants (``coder.model.scorer.choose_precision``, as each worker checks it), and a code list is
        read (``coder.ontology.codelist.read_code_list``), so either mistake stops the run before any worker starts."""
        choose_precision(folder, config, precision, gpu=gpu_requested(device))
        code_list = codes_file or (folder / config.code_list if config.code_list else None)
        listed = read_code_list(code_list.resolve()) if code_list else None
        ontology = {**releases(), "code_list": str(listed.path) if listed else None,
                    "code_list_sha256": listed.sha256 if listed else None}
        return cls(name=config.name, path=folder, hash=model_hash(folder), components=component_hashes(config),
                   truncations=dict(config.truncations), ontology=ontology, code_list=code_list)


def _stage_seconds(counts: Mapping[str, Any]) -> dict[str, float]:
    """The ``seconds.<stage>`` entries of a batch's counts, by stage."""
    return {key.removeprefix(_SECONDS): float(value) for key, value in counts.items() if key.startswith(_SECONDS)}


def _fingerprint(plan: InputPlan, model: ModelRecord, *, options: PredictOptions, llm: LLMStage | None) -> dict[str, Any]:
    """Everything that must match for ``--resume`` to continue a run rather than mix two; what the batches
    run on (execution provider and precision: the workers', which the driver need not know) is checked per
    batch (``PartsFolder.write_batch``)."""
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


def run_batches(plan: InputPlan, *, model: ModelRecord, outputs: RunOutputs, engine: Engine,
                options: PredictOptions = PredictOptions(), llm: LLMStage | None = None) -> RunSummary:
    """Code every note of ``plan`` (``plan_run``) and write ``outputs`` (claimed with
    ``coder.io.outputs.claim_outputs``: checked, and locked for this run); ``model`` is recorded in the
    manifest and the fingerprint, ``llm`` (the stage the local engine runs, if on) too.

    Input rows = notes coded + rows quarantined, always. ``engine`` maps the batch worker over the batches
    not done before a resume (``coder.engines.local.LocalEngine``, ``coder.engines.processes.ProcessesEngine``
    or ``coder.engines.ray.RayEngine``). An input file that changed since it was planned stops the run before
    anything is published; the parts stay for ``--resume``."""
    started = datetime.now(UTC)
    clock = time.monotonic()
    out, quarantine = outputs.predictions, outputs.quarantine
    parts = PartsFolder(out)
    resumed = parts.start(fingerprint=_fingerprint(plan, model, options=options, llm=llm), resume=options.resume)
    done = dict(resumed.done)
    batches, pending = plan_batches(plan, batch_size=options.batch_size, done=done)
    fresh_rows = sum(batch.rows for batch in pending)
    progress = Progress(total=plan.total_rows, quiet=options.quiet)
    progress.update(plan.total_rows - fresh_rows)  # the batches done before a resume
    ran_on, stage_seconds = set(parts.ran_on), Counter()

    def record(result: BatchResult) -> None:
        done[result.index] = dict(result.counts)
        ran_on.add(result.ran_on)
        stage_seconds.update(_stage_seconds(result.counts))
        progress.update(result.counts["input_rows"])

    worker = BatchWorker(plan=plan, parts=parts, batch_size=options.batch_size, top_k=options.top_k,
                         threshold_only=options.threshold_only, max_note_chars=options.max_note_chars)
    engine_section = engine(worker, pending, record=record)
    progress.close()
    for file in plan.files:
        check_unchanged(file)
    parts.combine("predictions", schema=PREDICTION_SCHEMA, dest=out, batches=batches)
    parts.combine("quarantine", schema=QUARANTINE_SCHEMA, dest=quarantine, batches=batches)
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
        quarantined={k.removeprefix(QUARANTINED): v for k, v in sorted(totals.items()) if k.startswith(QUARANTINED)},
        skipped_columns=plan.skipped_columns,
        seconds=seconds,
        resumed_batches=len(resumed.done),
        recomputed_batches=len(resumed.recomputed),
        llm=manifest_section(llm, totals),
        over_max_note_chars=totals[OVER_MAX_NOTE_CHARS],
        max_note_chars=options.max_note_chars,
    )
    model_seconds = sum(value for stage, value in stage_seconds.items() if stage != "llm")
    # what every batch of the run ran on, those done before a resume included (several if workers differed)
    providers, precisions = (",".join(sorted(set(names))) for names in zip(*(entry.rsplit(" ", 1) for entry in ran_on)))
    manifest = {
        "coder_version": __version__,
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "inputs": [{"path": str(f.path), "rows": f.rows, "sha256": f.sha256} for f in plan.files],
        "skipped_files": [str(path) for path in plan.skipped_files],
        "id_column": plan.id_column,
        "text_columns": dict(plan.columns),
        "skipped_components": list(plan.skipped_columns),
        "model": {"name": model.name, "path": str(model.path), "hash": model.hash,
                  "components": dict(model.components), "execution_provider": providers,
                  "precision": precisions, "truncations": dict(model.truncations)},
        "engine": engine_section,
        "ontology": dict(model.ontology),
        "codes_file": {"path": str(model.code_list.resolve()), "sha256": file_sha256(model.code_list)} if model.code_list else None,
        "options": {"top_k": options.top_k, "threshold_only": options.threshold_only, "batch_size": options.batch_size,
                    "max_note_chars": options.max_note_chars},
        "counts": {
            "input_rows": summary.input_rows,
            "notes_coded": summary.notes_coded,
            "notes_without_codes": summary.notes_without_codes,
            "quarantined": dict(summary.quarantined),
            "truncated": summary.truncated,
            OVER_MAX_NOTE_CHARS: summary.over_max_note_chars,
            "codes_written": summary.codes_written,
            "skipped_components": len(plan.skipped_columns),
        },
        "timing": {
            "seconds": round(seconds, 3),
            "resumed_batches": summary.resumed_batches,
            "resume_recomputed_batches": len(resumed.recomputed),
            "notes_this_run": fresh_rows,
            "notes_per_s": round(fresh_rows / seconds, 3) if seconds else None,
            "model_seconds": round(model_seconds, 3),
            "model_notes_per_s": round(fresh_rows / model_seconds, 3) if model_seconds else None,
            "stage_seconds": {stage: round(value, 3) for stage, value in stage_seconds.items()},
        },
        "outputs": {"predictions": str(out), "quarantine": str(quarantine)},
        "llm": dict(summary.llm),
    }
    write_json(summary.manifest, manifest)
    parts.remove()
    log.info("%d notes in %.1f s (%.1f notes/s)", fresh_rows, seconds, fresh_rows / seconds if seconds else 0.0)
    return summary
