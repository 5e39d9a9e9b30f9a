"""Assembly: a model folder read and checked, and the parts the pipeline's stages run composed from it.

PLM-ICD's runtime (``coder.model``), the candidate stack (``coder.candidates``), the rerankers
(``coder.rerank``) and the assignable-code rule (``coder.validate``) know nothing of each other; this
layer, above them all, builds each from the folder's config and checks it (``load_model``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import polars as pl

from coder.candidates import SOURCES, CandidateSource
from coder.candidates.stack import CandidateStack
from coder.errors import CoderError, MissingDependencyError, ModelBundleError
from coder.io.read import read_saved
from coder.model.folder import (
    ONNX_FILES, PRIOR_FILE, ModelConfig, SourceSpec, check_versions, component_hashes, component_of,
    default_model_path, model_hash, read_card, read_config, verify_folder,
)
from coder.model.scorer import PlmIcdScorer, choose_precision, gpu_requested, load_scorer
from coder.ontology import Ontology, load_ontology
from coder.rerank.reranker import Reranker
from coder.rerank.score import Ranking
from coder.validate import AssignableCodes
from coder.schema import PLM_ICD

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Model:
    """A model folder, loaded: build with ``load_model``."""

    folder: Path
    config: ModelConfig
    hash: str
    """sha256 of the config, which lists every file's sha256."""
    components: dict[str, str]
    """Component -> hash (``coder.model.folder.component_hashes``): what ``--resume`` compares."""
    scorer: PlmIcdScorer
    stack: CandidateStack
    ranking: Ranking
    gate: AssignableCodes
    ontology: Ontology
    code_list: Path | None
    """The code list in force: ``--codes-file``, else the folder's own, else none."""

    @property
    def text_columns(self) -> tuple[str, ...]:
        """The note columns the model reads: the encoder's first, then the sources' (optional)."""
        return self.config.note_columns

    @property
    def precision(self) -> str:
        return self.scorer.precision

    @property
    def execution_provider(self) -> str:
        return self.scorer.execution_provider

    def describe(self, code: str, system: str) -> str:
        return self.ontology.description(code, system)


def load_model(path: Path | None = None, *, device: str = "auto", precision: str = "auto",
               codes_file: Path | None = None, config: ModelConfig | None = None) -> Model:
    """Load and check a model folder (default ``default_model_path()``): no pickle, no unlisted
    file, no symbolic link, no path outside the folder, every file used matches its sha256, label count
    against the ONNX output width. A component that fails to load is a ModelBundleError naming it.

    ``codes_file``: a code list that replaces the folder's own. ``config``: the folder's config, when the
    caller has read it already."""
    folder = path or default_model_path()
    config = config or read_config(folder)
    chosen = choose_precision(folder, config, precision, gpu=gpu_requested(device))
    own_list = folder / config.code_list if config.code_list else None
    needed = [name for name in config.files if not name.startswith("onnx/")] + [ONNX_FILES[chosen]]
    verify_folder(folder, config, needed=needed)
    check_versions(read_card(folder))
    code_list = codes_file or own_list
    load_codes = functools.partial(load_ontology, codes_file=code_list)
    # the folder's own list is one of its components; a --codes-file is the user's and fails as itself
    ontology = _component("code_list", folder, load_codes) if codes_file is None and own_list else load_codes()
    if config.ontology and {k: v for k, v in config.ontology.items() if not k.startswith("code_list")} != {
            k: v for k, v in ontology.release.items() if not k.startswith("code_list")}:
        logger.warning("model labels were checked against ontology %s, running with %s", config.ontology, ontology.release)
    scorer = _component("plm_icd", folder, functools.partial(load_scorer, folder, config, precision=chosen, device=device))
    terms = _component("terms", folder, functools.partial(read_saved, folder / config.terms)) if config.terms else None
    sources = tuple(_component(spec.name, folder, functools.partial(_load_source, folder, spec, terms=terms))
                    for spec in config.sources)
    ranking = Ranking(
        rerankers={spec.sources: _component(f"reranker.{'+'.join(spec.sources)}", folder,
                                            functools.partial(Reranker.load, folder / spec.folder)) for spec in config.rerankers},
        prior=_component(component_of(PRIOR_FILE, config), folder, functools.partial(read_saved, folder / PRIOR_FILE))
        if config.rerankers else None,
        label_thresholds=scorer.label_thresholds(),
    )
    logger.info("model %s (%s, %d labels, sources: %s, %d rerankers) on %s", config.name, chosen, len(config.labels),
                ", ".join([PLM_ICD, *(s.name for s in sources)]), len(ranking.rerankers), scorer.execution_provider)
    return Model(folder=folder, config=config, hash=model_hash(folder), components=component_hashes(config),
                 scorer=scorer, stack=CandidateStack(sources), ranking=ranking,
                 gate=AssignableCodes(ontology, truncations=config.truncations), ontology=ontology, code_list=code_list)


def _component(name: str, folder: Path, load: Callable[[], T]) -> T:
    """``load()``, any failure but a missing dependency as a ModelBundleError naming component ``name``; an
    unexpected exception by its type alone (its message could quote the file)."""
    try:
        return load()
    except (ModelBundleError, MissingDependencyError):
        raise
    except CoderError as error:
        raise ModelBundleError(f"{folder}: component {name} cannot be loaded: {error}") from error
    except Exception as error:
        raise ModelBundleError(f"{folder}: component {name} cannot be loaded ({type(error).__name__}); copy the whole "
                               "model folder again or rebuild it with `coder train`") from error


def _load_source(folder: Path, spec: SourceSpec, *, terms: pl.DataFrame | None) -> CandidateSource:
    """The source ``spec`` names; one that reads terms gets the folder's stored ``terms``."""
    if spec.kind not in SOURCES:
        raise ModelBundleError(f"{folder}: source {spec.name!r} is of kind {spec.kind!r}, which this coder does not know "
                               f"(known: {', '.join(SOURCES)}); upgrade coder or rebuild the model")
    kind = SOURCES[spec.kind]
    source = kind.load(folder / spec.folder, terms=terms) if kind.reads_terms else kind.load(folder / spec.folder)
    if source.name != spec.name:
        raise ModelBundleError(f"{folder / spec.folder}: the source saved there is named {source.name!r}, "
                               f"the config says {spec.name!r}")
    return source

