"""The candidate stack: a model's sources in evidence priority, and the one path from notes to the
rerankers' candidate frame.

``coder predict`` (``coder.pipeline``), ``coder train``'s out-of-fold stacking (``coder.train.stacking``)
and the benchmarks all take it:

    fit       unfitted copies of the sources a corpus can fit, fitted on it (``refit``: only those that
              learn from notes)
    frames    each source's candidates for a batch (the sources whose column the notes have: ``candidates``),
              PLM-ICD's last (its evidence, an attention peak, is the weakest), then the backfill
    merge     one row per (note, system, code): each frame's declared features, the evidence, ``source``
    features  the merged frame with the code- and note-level features (``coder.candidates.features``)
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl
from sklearn.base import clone

from coder.candidates.backfill import backfill
from coder.candidates.base import CandidateSource
from coder.candidates.features import add_features, merge_candidates
from coder.schema import NOTE_ID, PLM_ICD

if TYPE_CHECKING:
    from coder.io.corpus import Corpus
    from coder.model.scorer import Scored

SourceFrames = dict[str, pl.DataFrame]
"""Source name -> its candidate frame, in evidence priority."""


@dataclass(frozen=True)
class CandidateStack:
    """Candidate sources in evidence priority (a code's evidence comes from the first that has some)."""

    sources: tuple[CandidateSource, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(source.name for source in self.sources)

    def usable(self, columns: Collection[str]) -> CandidateStack:
        """The sources that can run on notes with ``columns``."""
        return CandidateStack(tuple(source for source in self.sources if source.text_column in columns))

    def fit(self, corpus: Corpus, *, ontology: Any) -> CandidateStack:
        """Unfitted copies (``clone``) of the sources ``corpus`` can fit, fitted on it; the others are left out."""
        return CandidateStack(tuple(clone(source).fit(corpus, ontology=ontology) for source in self.sources
                                    if source.can_fit(corpus)))

    def refit(self, corpus: Corpus, *, ontology: Any) -> CandidateStack:
        """The sources that learn from notes fitted again (copies) on ``corpus``, or left out when it cannot
        fit them; the sources that read only the ontology as they are."""
        return CandidateStack(tuple(
            source if not source.learns_from_notes else clone(source).fit(corpus, ontology=ontology)
            for source in self.sources if not source.learns_from_notes or source.can_fit(corpus)))

    def fitted_once(self) -> CandidateStack:
        """The sources that read only the ontology: out-of-fold stacking fits them once."""
        return CandidateStack(tuple(source for source in self.sources if not source.learns_from_notes))

    def candidates(self, notes: pl.DataFrame, *, known: Mapping[str, pl.DataFrame] | None = None) -> SourceFrames:
        """Each usable source's own candidates for ``notes`` (not backfilled). ``known``: such frames found
        earlier, by source name, restricted to these notes instead of running the source again."""
        frames: SourceFrames = {}
        for source in self.usable(notes.columns).sources:
            if known is not None and source.name in known:
                frames[source.name] = known[source.name].join(notes.select(NOTE_ID), on=NOTE_ID, how="semi")
            else:
                frames[source.name] = source.candidates(notes)
        return frames

    def frames(self, notes: pl.DataFrame, *, plm: Scored | None = None, known: Mapping[str, pl.DataFrame] | None = None
               ) -> SourceFrames:
        """``candidates``, PLM-ICD's (``plm``, its scores of these notes) last, every frame backfilled
        (``coder.candidates.backfill``)."""
        frames = self.candidates(notes, known=known)
        if plm is not None:
            frames[PLM_ICD] = plm.candidates.join(notes.select(NOTE_ID), on=NOTE_ID, how="semi")
        return backfill(frames, sources=[*self.sources, *([plm] if plm is not None else [])], notes=notes)

    def merge(self, frames: Mapping[str, pl.DataFrame], *, plm: Scored | None = None) -> pl.DataFrame:
        """``frames`` (of these sources and ``plm``, in evidence priority) as one candidate frame
        (``coder.candidates.features.merge_candidates``)."""
        producers = {source.name: source for source in self.sources} | ({PLM_ICD: plm} if plm is not None else {})
        unknown = [name for name in frames if name not in producers]
        if unknown:
            raise ValueError(f"frames of {unknown} have no source in the stack {list(producers)}")
        return merge_candidates(frames, columns={name: producers[name].text_column for name in frames},
                                features={name: producers[name].get_feature_names_out() for name in frames})

    def features(self, frames: Mapping[str, pl.DataFrame], *, prior: pl.DataFrame, plm: Scored | None = None
                 ) -> pl.DataFrame:
        """``merge`` with the code- and note-level features the rerankers read (``add_features``)."""
        return add_features(self.merge(frames, plm=plm), prior=prior, sources=tuple(frames))
