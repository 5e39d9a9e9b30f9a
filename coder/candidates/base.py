"""What every candidate source is: an estimator, in scikit-learn's habit, that proposes codes for notes.

A new source subclasses ``CandidateSource`` in one module of this package, implements ``fit``,
``candidates``, ``save`` and ``load``, declares its frame's features in ``FEATURES``, and is registered
by one line in ``coder.candidates.SOURCES``; ``coder train`` then fits it, the model folder lists it and
``coder predict`` runs it (CONTRIBUTING.md, "Architecture"). ``tests/test_candidates_conformance.py``
runs every registered source through the same checks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import polars as pl

from coder.estimator import ParamsMixin, check_fitted

if TYPE_CHECKING:
    from coder.io.corpus import Corpus


class CandidateSource(ParamsMixin, ABC):
    """Base of the candidate sources: parameters are ``__init__``'s keyword arguments (``get_params``,
    so ``sklearn.base.clone`` gives an unfitted copy), fitted state lives in attributes ending in ``_``.

    Every instance has ``name`` (its score column ``<name>``, its rank ``<name>_rank``, its features
    ``<name>_<feature>`` and its label in ``source``) and ``text_column`` (the note column it reads:
    notes without it skip the source)."""

    name: str
    text_column: str
    learns_from_notes: ClassVar[bool] = True
    """False when fitting reads only the ontology (then out-of-fold stacking fits it once)."""
    FEATURES: ClassVar[tuple[str, ...]] = ()
    """The suffixes of the feature columns ``candidates`` writes beside ``<name>`` and ``<name>_rank``:
    ``("support",)`` declares ``<name>_support``. Only declared columns reach the rerankers."""
    reads_terms: ClassVar[bool] = False
    """True for a source fitted on the ontology's terms (``ontology_terms``, its ``terms_``): a model folder
    stores the terms once for every such source (``terms.parquet``) and ``load`` takes them."""
    backfill: bool = False
    """True for a source that scores any code (``score``): it also scores the other sources' candidates
    (``coder.candidates.backfill``), into ``<name>_all``."""

    def can_fit(self, corpus: Corpus) -> bool:
        """Whether ``corpus`` has what fitting needs; by default, the text column."""
        return self.text_column in corpus.notes.columns

    @abstractmethod
    def fit(self, corpus: Corpus, *, ontology: Any) -> Self:
        """Learn from labelled notes and the ontology; returns self."""

    @abstractmethod
    def candidates(self, notes: pl.DataFrame) -> pl.DataFrame:
        """One row per (note_id, system, code) proposed: ``<name>`` (higher is better), optional
        ``<name>_rank`` and declared ``<name>_<feature>`` columns, optional evidence columns
        (``coder.schema.EVIDENCE``, offsets into ``text_column``). A note's rows never depend on the
        other notes of ``notes``."""

    def score(self, notes: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
        """``<name>`` of each (note_id, system, code) of ``keys`` that the source can score (sources with
        ``backfill`` only)."""
        raise NotImplementedError(f"{type(self).__name__} does not backfill")

    @abstractmethod
    def save(self, path: Path) -> None:
        """Write the fitted state into the folder ``path`` (JSON, parquet, npz: never pickle); a source that
        ``reads_terms`` records their digest (``terms_digest``), not the terms."""

    @classmethod
    @abstractmethod
    def load(cls, path: Path) -> Self:
        """Read what ``save`` wrote. A source that ``reads_terms`` takes the model's stored terms too,
        ``load(path, terms=...)``, and checks them against their recorded digest."""

    def get_feature_names_out(self) -> tuple[str, ...]:
        """The columns of the candidate frame the rerankers may read: score, declared features, rank,
        and ``<name>_all`` when backfilling."""
        return (self.name, *(f"{self.name}_{feature}" for feature in self.FEATURES), f"{self.name}_rank",
                *((f"{self.name}_all",) if self.backfill else ()))

    def check_fitted(self) -> None:
        """NotFittedError unless ``fit`` or ``load`` has run."""
        check_fitted(self)
