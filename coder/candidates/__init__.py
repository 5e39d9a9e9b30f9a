"""Candidate sources: each proposes codes for a batch of notes, with scores, features and evidence.

A source subclasses ``coder.candidates.base.CandidateSource``; ``SOURCES`` maps the ``kind`` a model
config names to its class. A new source is one module in this package plus one line in ``SOURCES``
(see CONTRIBUTING.md). PLM-ICD is not among them: it is the pipeline's chunk-and-score stage
(``coder.model.scorer``), whose frame joins the sources' frames under the name ``plm_icd``
(``coder.candidates.stack``).
"""

from __future__ import annotations

from coder.candidates.base import CandidateSource
from coder.candidates.dense_search import DenseSearch
from coder.candidates.lexicon import EvidenceLexicon
from coder.candidates.mined import MinedLexicon
from coder.candidates.ontology_search import OntologySearch
from coder.candidates.term_match import TermMatch
from coder.candidates.tfidf import TfidfClassifier

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
