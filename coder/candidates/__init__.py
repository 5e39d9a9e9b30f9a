"""Candidate sources: each proposes codes for a batch of notes, with scores, features and evidence.

A source is an estimator with the protocol below; ``SOURCES`` maps the ``kind`` a model config
names to its class. A new source is one module in this package plus one line in ``SOURCES``
(see CONTRIBUTING.md). PLM-ICD is not among them: it is the pipeline's chunk-and-score stage
(``coder.model.scorer``), whose frame joins the sources' frames under the name ``plm_icd``.
A source that can score any code may set ``backfill`` and give ``score(notes, keys)``: it then also
scores the other sources' candidates (``coder.candidates.backfill``; the ontology searches and the
term match do).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, Self

import polars as pl

from coder.candidates.dense_search import DenseSearch
from coder.candidates.lexicon import EvidenceLexicon
from coder.candidates.mined import MinedLexicon
from coder.candidates.ontology_search import OntologySearch
from coder.candidates.term_match import TermMatch
from coder.candidates.tfidf import TfidfClassifier

if TYPE_CHECKING:
    from coder.io.corpus import Corpus
    from coder.ontology import Ontology


class CandidateSource(Protocol):
    """What the pipeline and ``coder train`` need from a candidate source."""

    name: str
    """Its score column (``<name>``, ``<name>_rank``, ``<name>_*`` features) and its label in ``source``."""
    text_column: str
    """The note column it reads; notes without it skip the source."""
    learns_from_notes: ClassVar[bool]
    """False when fitting reads only the ontology (then out-of-fold stacking fits it once)."""

    def get_params(self, deep: bool = True) -> dict:
        """The keyword arguments of ``__init__`` (``coder.estimator.ParamsMixin``): ``sklearn.base.clone``
        copies a source, unfitted, with them."""

    def can_fit(self, corpus: Corpus) -> bool:
        """Whether ``corpus`` has what fitting needs (e.g. evidence spans, the text column)."""

    def fit(self, corpus: Corpus, *, ontology: Ontology) -> Self:
        """Learn from labelled notes (and the ontology); returns self."""

    def candidates(self, notes: pl.DataFrame) -> pl.DataFrame:
        """One row per (note_id, system, code) proposed: ``<name>`` (higher is better), optional
        ``<name>_rank`` and ``<name>_*`` features, optional evidence columns (``coder.schema.EVIDENCE``,
        offsets into ``text_column``)."""

    def save(self, path: Path) -> None:
        """Write the fitted state into the folder ``path`` (JSON, parquet, npz: never pickle)."""

    @classmethod
    def load(cls, path: Path) -> Self:
        """Read what ``save`` wrote."""


SOURCES: dict[str, type[CandidateSource]] = {
    "dense_search": DenseSearch,
    "evidence_lexicon": EvidenceLexicon,
    "mined_lexicon": MinedLexicon,
    "ontology_search": OntologySearch,
    "term_match": TermMatch,
    "tfidf": TfidfClassifier,
}
"""Source kind (as a model config names it) -> class."""


def kind_of(source: CandidateSource) -> str:
    """The ``SOURCES`` key of a source's class."""
    return next(kind for kind, cls in SOURCES.items() if type(source) is cls)
