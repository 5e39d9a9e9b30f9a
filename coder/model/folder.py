"""The model folder: a ``ModelConfig`` in ``coder_model.json`` beside the weights, tokenizer and ONNX files.

Layout (each part named for what it holds, like sentence-transformers' numbered modules)::

    coder_model.json     ModelConfig: labels, thresholds, chunking, text columns, provenance, hashes
    README.md            model card
    plm_icd/             encoder config, tokenizer, model.safetensors (encoder + head, stored fp16)
    onnx/                model.onnx (fp32), model.int8.onnx, model.fp16.onnx
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from importlib.metadata import PackageNotFoundError, version

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from coder.errors import ModelBundleError
from coder.hashing import file_sha256 as sha256_file

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_FILE = "coder_model.json"
CARD_FILE = "README.md"
# Text after this line in a model card is the user's (or the stack's): coder train/export keep it.
CARD_KEEP = "<!-- coder: the sections below are kept when coder train/export rewrite this card -->\n"
TORCH_DIR = "plm_icd"
WEIGHTS_FILE = f"{TORCH_DIR}/model.safetensors"
ONNX_FILES = {"fp32": "onnx/model.onnx", "int8": "onnx/model.int8.onnx", "fp16": "onnx/model.fp16.onnx"}
MODEL_ENV = "CODER_MODEL"


@dataclass(frozen=True)
class Label:
    """One output of the classifier."""

    system: str
    """schema.CM or schema.PCS."""
    code: str
    """Canonical code as the ontology writes it."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to use, check and reproduce a model folder; saved as ``coder_model.json``."""

    name: str
    """Model name (the folder name when trained)."""
    labels: tuple[Label, ...]
    """Output index -> (system, code)."""
    thresholds: tuple[float, ...]
    """Decision threshold per label (per-code where it helped on dev, else the system threshold)."""
    system_thresholds: dict[str, float]
    """Threshold per system that maximised dev micro-F1."""
    chunk_len: int
    """Tokens per chunk including [CLS] and [SEP]."""
    max_chunks: int
    """Chunks kept per note; longer notes are truncated."""
    attention_dim: int
    """Width of the label-attention projection."""
    text_columns: dict[str, str]
    """Role -> input column, e.g. {"encoder": "text"}."""
    encoder: dict[str, str]
    """Pretrained encoder: name and where it was loaded from."""
    ontology: dict[str, Any]
    """Ontology release the labels were checked against (incl. code_list_sha256)."""
    unknown_codes: tuple[str, ...]
    """"system code" labels seen in training that the ontology did not know (kept only if vouched for)."""
    training: dict[str, Any]
    """Command, seed, hyperparameters, data hashes, truncation counts, epochs run."""
    dev_metrics: dict[str, Any]
    """Dev metrics per system (MAP, P@5, P@10, micro-F1 at thresholds)."""
    onnx: dict[str, Any] = field(default_factory=dict)
    """Variant (fp32/int8/fp16) -> {"file", "kept", "dev_map", ...}, written by ``coder export``."""
    versions: dict[str, str] = field(default_factory=dict)
    """Library versions that wrote the folder."""
    files: dict[str, str] = field(default_factory=dict)
    """Relative path -> sha256 of every weight and ONNX file."""
    format_version: int = FORMAT_VERSION
    """Layout version of the folder."""

    @property
    def systems(self) -> tuple[str, ...]:
        """System of each label, by output index."""
        return tuple(label.system for label in self.labels)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = CONFIG_FILE) -> ModelConfig:
        """Build from parsed JSON, refusing unknown and missing keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        unknown = sorted(set(data) - known)
        missing = sorted(required - set(data))
        if unknown or missing:
            raise ModelBundleError(
                f"{source}: unknown keys {unknown} and missing keys {missing}; "
                f"it was written by another coder version: re-export or retrain the model"
            )
        if data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise ModelBundleError(
                f"{source}: format_version {data['format_version']}, this coder reads {FORMAT_VERSION}"
            )
        values = dict(data)
        values["labels"] = tuple(Label(**label) for label in data["labels"])
        values["thresholds"] = tuple(float(t) for t in data["thresholds"])
        values["unknown_codes"] = tuple(data["unknown_codes"])
        return cls(**values)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that write and read model folders (read from package metadata: no imports)."""
    found = {}
    for name, dist in (("coder", "coder"), ("torch", "torch"), ("transformers", "transformers"), ("onnxruntime", "onnxruntime-gpu")):
        try:
            found[name] = version(dist)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def read_config(folder: Path) -> ModelConfig:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelBundleError(f"{folder} is not a coder model folder: {CONFIG_FILE} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelBundleError(f"{path} is not valid JSON: {error}") from None
    return ModelConfig.from_dict(data, source=str(path))


def write_config(folder: Path, config: ModelConfig) -> None:
    """Write the config atomically (a reader never sees half a file)."""
    tmp = folder / f".{CONFIG_FILE}.tmp"
    tmp.write_text(config.to_json(), encoding="utf-8")
    os.replace(tmp, folder / CONFIG_FILE)


def with_file_hashes(folder: Path, config: ModelConfig) -> ModelConfig:
    """Record the sha256 of the weights and of every ONNX file present."""
    names = [WEIGHTS_FILE, *ONNX_FILES.values()]
    files = {name: sha256_file(folder / name) for name in names if (folder / name).is_file()}
    return dataclasses.replace(config, files=files, versions=library_versions())


def verify_file(folder: Path, config: ModelConfig, name: str) -> Path:
    """Path of ``name`` in the folder after checking it exists and matches its recorded hash."""
    path = folder / name
    if not path.is_file():
        raise ModelBundleError(f"{path} is missing; run `coder export {folder}` to (re)create ONNX files")
    expected = config.files.get(name)
    if expected is None:
        raise ModelBundleError(f"{CONFIG_FILE} records no sha256 for {name}; re-export the model")
    found = sha256_file(path)
    if found != expected:
        raise ModelBundleError(
            f"{path} has sha256 {found[:12]}…, {CONFIG_FILE} expects {expected[:12]}…; "
            "the file was changed or replaced after export"
        )
    return path


def check_versions(config: ModelConfig) -> None:
    """Warn when the libraries that read the model differ in major.minor from those that wrote it."""
    now = library_versions()
    for name, written in config.versions.items():
        current = now.get(name)
        if current and written.split(".")[:2] != current.split(".")[:2]:
            logger.warning("model written with %s %s, running %s", name, written, current)


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(folder / TORCH_DIR))


CODE_LIST_FILE = "codes.tsv"  # the user code list a model was trained with, shipped beside its weights


def model_code_list(folder: Path, codes_file: Path | None = None) -> Path | None:
    """The code list to validate a model's codes with: the user's ``codes_file`` when given,
    else the one the model folder carries (codes of an older release its training data used)."""
    if codes_file is not None:
        return codes_file
    shipped = folder / CODE_LIST_FILE
    return shipped if shipped.is_file() else None


def default_model_path() -> Path:
    """``$CODER_MODEL`` if set, else ``<repo root>/models/codiesp-minilm``."""
    configured = os.environ.get(MODEL_ENV)
    path = Path(configured) if configured else Path(__file__).resolve().parents[2] / "models" / "codiesp-minilm"
    if not (path / CONFIG_FILE).is_file():
        origin = f"${MODEL_ENV}" if configured else "the default model path"
        raise ModelBundleError(
            f"no model at {path} ({origin}): train one with `coder train --out {path}` "
            f"or point ${MODEL_ENV} at a model folder"
        )
    return path


def _metrics_table(metrics: dict[str, Any]) -> str:
    rows = ["| system | notes | MAP | P@5 | P@10 | micro-F1 at thresholds |", "|---|---|---|---|---|---|"]
    for system, values in metrics.items():
        if isinstance(values, dict):
            cells = [f"{values[key]:.4f}" if key in values else "–" for key in ("map", "p@5", "p@10", "micro_f1_at_threshold")]
            rows.append(f"| {system} | {int(values.get('notes', 0))} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_card(folder: Path, config: ModelConfig) -> None:
    """Write the model card (README.md) from the config; text after ``CARD_KEEP`` in an existing
    card (e.g. a section on the candidate stack) is kept."""
    counts: dict[str, int] = {}
    for label in config.labels:
        counts[label.system] = counts.get(label.system, 0) + 1
    variants = "\n".join(
        f"- {variant}: `{info.get('file')}`, kept: {info.get('kept')}, dev MAP: {info.get('dev_map')}"
        for variant, info in config.onnx.items()
    ) or "- none yet: run `coder export` on this folder"
    card = f"""# {config.name}

PLM-ICD classifier for ICD-10-CM (diagnoses) and ICD-10-PCS (procedures), used by `coder predict`.
Encoder: {config.encoder.get("name")} fine-tuned per {config.chunk_len}-token chunk (at most
{config.max_chunks} chunks per note), with masked label-wise attention over the joined chunks.

- Labels: {len(config.labels)} ({", ".join(f"{s}: {n}" for s, n in counts.items())}); codes the
  ontology did not know and no code list vouched for (left out): {len(config.unknown_codes)}
- Text column: {config.text_columns}
- Ontology release: {config.ontology}

## Dev metrics (epoch {config.dev_metrics.get("epoch", "–")})

MAP as CodiEsp's official scorer computes it, over dev notes with at least one gold code of the
system. Micro-F1 uses the thresholds tuned on these same dev notes (optimistic) and counts every
gold code, also those the model has no label for.

{_metrics_table(config.dev_metrics)}

## ONNX variants

{variants}

A copy of this folder may leave out large variants (see its `.gitignore`); `coder export` on the
folder (with `--dev-notes`/`--dev-codes` for the int8 check) writes them again.

## Training

```
{config.training.get("command", "")}
```

Seed {config.training.get("seed")}; hyperparameters, data hashes and per-epoch history are in `{CONFIG_FILE}`.

## Data and licences

- Training data: CodiEsp corpus, CLEF eHealth 2020 Task 1 (Barcelona Supercomputing Center):
  Miranda-Escalada A., Gonzalez-Agirre A., Armengol-Estapé J., Krallinger M. (2020), "Overview of
  automatic clinical coding: annotations, guidelines, and solutions for non-English clinical cases
  at CodiEsp track of CLEF eHealth 2020". Licence CC BY 4.0 (English machine translation of
  Spanish clinical case reports).
- Encoder weights: {config.encoder.get("name")}{" (Apache-2.0)" if "MiniLM" in config.encoder.get("name", "") else ""}.
- Not for unsupervised clinical use: scores rank candidate codes for a human coder.
"""
    path = folder / CARD_FILE
    kept = path.read_text(encoding="utf-8").partition(CARD_KEEP)[2] if path.exists() else ""
    path.write_text(card + (f"\n{CARD_KEEP}{kept}" if kept else ""), encoding="utf-8")
