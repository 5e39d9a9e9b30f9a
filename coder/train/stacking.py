"""Fit the candidate sources and the rerankers without leakage (stacked generalisation).

The reranker must learn from candidate features that look like the ones it will meet on unseen
notes. On training notes, in-sample lexicon reliabilities and classifier scores are too good, so
the training frame is built out of fold: train is cut into K folds, each source that learns from
notes is fitted on K-1 folds and scores the held-out fold; a source that learns only from the
ontology is fitted once. The sources are then refitted on all of train.

PLM-ICD scores have no out-of-fold version on train (the model was fitted on all of it). The
rerankers that read them learn from the dev candidates and, with PLM-ICD's features missing,
from the out-of-fold train candidates of the same sources (more notes for everything but
PLM-ICD). The shipped reranker is fitted on all dev candidates; then the sources that learn from
notes are fitted again on train and dev (``refit``): more labelled notes, more codes and phrases
reached. The honest dev figure mirrors that: ``cross_fit`` scores each dev note with a reranker
fitted on the other dev folds, over candidates from sources fitted on train and those folds
(``refit_dev_frames``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl
from sklearn.base import clone

from coder.candidates import CandidateSource, kind_of
from coder.candidates.backfill import backfill
from coder.candidates.features import PLM_ICD, assemble, code_prior, with_labels
from coder.candidates.dense_search import DenseSearch
from coder.candidates.lexicon import EvidenceLexicon
from coder.candidates.mined import MinedLexicon
from coder.candidates.ontology_search import OntologySearch
from coder.candidates.term_match import TermMatch
from coder.candidates.tfidf import TfidfClassifier
from coder.io.atomic import write_parquet
from coder.io.corpus import Corpus
from coder.model.folder import RerankerSpec, SourceSpec
from coder.model.scorer import Scored
from coder.model.load import PRIOR_FILE
from coder.ontology import Ontology
from coder.rerank.reranker import Reranker, fold_ids
from coder.schema import KEY, NOTE_ID, TEXT, TEXT_ES

logger = logging.getLogger(__name__)

SourceFrames = dict[str, pl.DataFrame]
"""Source name -> its candidate frame, in evidence priority."""


def default_sources(*, text_column: str = TEXT, language: str = "en",
                    sentence_encoder: str | None = None) -> list[CandidateSource]:
    """The sources ``coder train`` tries, unfitted, in evidence priority (those the corpus cannot fit
    are left out when fitting): the lexicons of coders' spans (the second language's, then the main
    text's, own or projected), the lexicons mined from notes and codes, the ontology searches (TF-IDF
    cosine, TF-IDF coverage, the term match, then dense), the TF-IDF classifier. ``text_column`` and
    ``language``: the notes' main text and its language (the ontology's descriptions are English:
    other languages mine without them, and the term match and the dense search, English words and
    an English sentence encoder against English terms, are left out).
    ``sentence_encoder``: the dense search's encoder folder (None: the packaged all-MiniLM-L6-v2)."""
    second = [column for column in (TEXT_ES,) if column != text_column]
    return [
        *(EvidenceLexicon(name=f"lexicon_{c.removeprefix('text_')}", text_column=c, language="es") for c in second),
        EvidenceLexicon(name="lexicon", text_column=text_column, language=language),
        MinedLexicon(name="mined", text_column=text_column, language=language, descriptions=language == "en"),
        *(MinedLexicon(name=f"mined_{c.removeprefix('text_')}", text_column=c, language="es", descriptions=False)
          for c in second),
        OntologySearch(name="ontology", text_column=text_column),
        OntologySearch(name="coverage", text_column=text_column, measure="coverage"),
        *([TermMatch(name="term_match", text_column=text_column),
           DenseSearch(name="dense", text_column=text_column, encoder=sentence_encoder)] if language == "en" else []),
        TfidfClassifier(name="tfidf", text_column=text_column),
    ]


def fit_sources(sources: Sequence[CandidateSource], corpus: Corpus, *, ontology: Ontology) -> list[CandidateSource]:
    """Unfitted copies (``clone``) of the ``sources`` that ``corpus`` can fit, fitted on it."""
    return [clone(source).fit(corpus, ontology=ontology) for source in sources if source.can_fit(corpus)]


def source_frames(sources: Sequence[CandidateSource], notes: pl.DataFrame, *,
                  known: SourceFrames | None = None) -> SourceFrames:
    """Each source's candidates for ``notes`` (those whose column the notes have), in the sources'
    order; ``known``: frames computed earlier (for sources that do not learn from notes), restricted
    to these notes instead of running the source again."""
    frames: SourceFrames = {}
    for source in sources:
        if source.text_column not in notes.columns:
            continue
        if known is not None and source.name in known:
            frames[source.name] = known[source.name].join(notes.select(NOTE_ID), on=NOTE_ID, how="semi")
        else:
            frames[source.name] = source.candidates(notes)
    return frames


def out_of_fold(corpus: Corpus, *, sources: Sequence[CandidateSource], ontology: Ontology, known: SourceFrames,
                folds: int = 5, seed: int = 0) -> list[tuple[SourceFrames, pl.DataFrame]]:
    """Per fold: each source's candidates for the held-out notes, from sources fitted on the other
    folds, and the code prior of those folds. ``known``: frames of the sources that do not learn
    from notes, computed once over all notes (those sources fitted: they backfill each fold's frames,
    ``coder.candidates.backfill``)."""
    fold = fold_ids(corpus.notes[NOTE_ID], folds=folds, seed=seed)
    out = []
    for k in range(folds):
        inside = corpus.subset(corpus.notes[NOTE_ID].filter(fold != k))
        fitted = {s.name: s for s in fit_sources([s for s in sources if s.name not in known], inside, ontology=ontology)}
        ordered = [fitted.get(s.name, s) for s in sources if s.name in fitted or s.name in known]
        held_out = corpus.notes.filter(fold == k)
        frames = backfill(source_frames(ordered, held_out, known=known), sources=ordered, notes=held_out)
        out.append((frames, code_prior(inside.codes)))
        logger.info("out-of-fold: fold %d/%d scored", k + 1, folds)
    return out


def labelled_frame(parts: list[tuple[SourceFrames, pl.DataFrame]], *, codes: pl.DataFrame,
                   sources: Sequence[str] | None = None) -> pl.DataFrame:
    """Assemble out-of-fold source frames (all sources, or only ``sources``) and label them."""
    frames = [assemble({n: f for n, f in found.items() if sources is None or n in sources}, prior=prior)
              for found, prior in parts]
    return with_labels(pl.concat(frames, how="diagonal_relaxed"), codes)


def cross_fit(frame: pl.DataFrame, *, reranker: Reranker, folds: int = 5, seed: int = 0,
              extra_rows: pl.DataFrame | None = None, held_out: pl.DataFrame | None = None) -> pl.DataFrame:
    """``frame`` (labelled) with ``score`` from rerankers that never saw the scored note, each also
    fitted on ``extra_rows`` (labelled candidates of other notes, see ``Reranker.fit``). With
    ``held_out`` (the same notes' candidates from other sources, ``refit_dev_frames``), each fold's
    reranker learns from ``frame`` and scores ``held_out``'s rows of that fold."""
    scored = frame if held_out is None else held_out
    fold_of = note_folds(pl.concat([frame[NOTE_ID], scored[NOTE_ID]]), folds=folds, seed=seed)
    frame, scored = (f.with_columns(pl.col(NOTE_ID).replace_strict(fold_of).alias("_fold")) for f in (frame, scored))
    parts = []
    for k in range(folds):
        model = clone(reranker).fit(frame.filter(pl.col("_fold") != k).drop("_fold"), extra_rows=extra_rows)
        parts.append(model.predict(scored.filter(pl.col("_fold") == k).drop("_fold")))
    return pl.concat(parts).sort(list(KEY))


def note_folds(note_ids: pl.Series, *, folds: int, seed: int) -> dict[str, int]:
    """Note id -> its fold, by ``fold_ids`` over the sorted distinct ids."""
    notes = note_ids.unique().sort()
    return dict(zip(notes.to_list(), fold_ids(notes, folds=folds, seed=seed).tolist()))


@dataclass(frozen=True)
class Stack:
    """Fitted candidate sources, a reranker per set of sources, and the training code prior."""

    sources: tuple[CandidateSource, ...]
    rerankers: dict[tuple[str, ...], Reranker]
    prior: pl.DataFrame
    out_of_fold: dict[tuple[str, ...], pl.DataFrame]
    """The labelled out-of-fold train frame each of ``rerankers`` was fitted on (not saved)."""

    def save(self, folder: Path) -> tuple[tuple[SourceSpec, ...], tuple[RerankerSpec, ...]]:
        """Write ``sources/<name>/``, ``rerankers/<a+b>/`` and ``rerankers/prior.parquet`` into a
        model folder; returns their config entries."""
        specs = tuple(SourceSpec(name=s.name, kind=kind_of(s), text_column=s.text_column) for s in self.sources)
        for spec, source in zip(specs, self.sources, strict=True):
            source.save(folder / spec.folder)
        rerankers = tuple(RerankerSpec(sources=sources) for sources in self.rerankers)
        for spec in rerankers:
            self.rerankers[spec.sources].save(folder / spec.folder)
        (folder / PRIOR_FILE).parent.mkdir(parents=True, exist_ok=True)
        write_parquet(folder / PRIOR_FILE, self.prior, durable=False)
        return specs, rerankers


def fit_stack(*, train: Corpus, ontology: Ontology, sources: Sequence[CandidateSource] | None = None, folds: int = 5,
              seed: int = 0, reranker: Reranker | None = None, degraded_column: str | None = TEXT) -> Stack:
    """Fit sources out of fold on ``train``, a reranker (with its cuts) on the out-of-fold frame,
    then the shipped sources on all of train. With ``degraded_column``, also a reranker for
    dumps that only have that text column."""
    reranker = reranker or Reranker()
    fitted = fit_sources(sources or default_sources(), train, ontology=ontology)
    known = source_frames([source for source in fitted if not source.learns_from_notes], train.notes)
    rerankers, frames = {}, {}
    for corpus in [train] + ([train.text_only(degraded_column)] if degraded_column else []):
        usable = [source for source in fitted if source.text_column in corpus.notes.columns]
        parts = out_of_fold(corpus, sources=usable, ontology=ontology, known=known, folds=folds, seed=seed)
        names = tuple(s.name for s in usable)
        frames[names] = labelled_frame(parts, codes=corpus.codes)
        rerankers[names] = clone(reranker).fit(frames[names], gold=corpus.codes)
    return Stack(tuple(fitted), rerankers, code_prior(train.codes), frames)


def dev_frames(stack: Stack, *, dev: Corpus, plm: Scored, degraded_column: str | None = TEXT
               ) -> dict[tuple[str, ...], pl.DataFrame]:
    """Labelled dev candidate frames with PLM-ICD's (``plm``: its scores of the dev notes), per set of
    sources a dump allows: every column, and only ``degraded_column``. The sources were fitted on
    train; PLM-ICD has no out-of-fold train scores, so its rerankers learn from these."""
    out = {}
    for notes in [dev.notes] + ([dev.notes.select(NOTE_ID, degraded_column)] if degraded_column else []):
        frames = source_frames(stack.sources, notes)
        frames[PLM_ICD] = plm.candidates.join(notes.select(NOTE_ID), on=NOTE_ID, how="semi")
        frames = backfill(frames, sources=[*stack.sources, plm], notes=notes)
        out[tuple(frames)] = with_labels(assemble(frames, prior=stack.prior), dev.codes)
    return out


def without_plm(stack: Stack, sources: tuple[str, ...]) -> pl.DataFrame | None:
    """The stack's out-of-fold train frame of ``sources`` less PLM-ICD: the extra rows of their
    reranker with PLM-ICD (``Reranker.fit``), or None when the stack has none."""
    return stack.out_of_fold.get(tuple(name for name in sources if name != PLM_ICD))


def add_plm_rerankers(stack: Stack, *, frames: dict[tuple[str, ...], pl.DataFrame], gold: pl.DataFrame,
                      reranker: Reranker | None = None) -> Stack:
    """Rerankers for the stack's sources plus PLM-ICD, fitted on the dev ``frames`` (``dev_frames``)
    and the out-of-fold train frame of the same sources. Report such a stack's dev figures with
    ``cross_fit`` (same extra rows), never with these rerankers."""
    reranker = reranker or Reranker()
    fitted = {sources: clone(reranker).fit(frame, gold=gold, extra_rows=without_plm(stack, sources))
              for sources, frame in frames.items()}
    return replace(stack, rerankers={**stack.rerankers, **fitted})


def refit(sources: Sequence[CandidateSource], corpus: Corpus, *, ontology: Ontology) -> tuple[CandidateSource, ...]:
    """``sources`` with those that learn from notes fitted again on ``corpus`` (train and dev: every
    labelled note). A stack's rerankers and code prior stay: they learnt the features of the same
    sources fitted on fewer notes, which a bigger corpus only extends (more phrases and codes)."""
    return tuple(clone(source).fit(corpus, ontology=ontology) if source.learns_from_notes else source for source in sources)


def dev_folds(sources: Sequence[CandidateSource], *, train: Corpus, dev: Corpus, ontology: Ontology, folds: int = 5,
              seed: int = 0) -> Iterator[tuple[Corpus, tuple[CandidateSource, ...]]]:
    """Per dev fold (``cross_fit``'s folds): its notes, and ``sources`` refitted on train and the
    other folds: how sources refitted on train and all of dev meet notes they never saw."""
    fold_of = note_folds(dev.notes[NOTE_ID], folds=folds, seed=seed)
    for k in range(folds):
        held = dev.subset(pl.Series([note for note, fold in fold_of.items() if fold == k], dtype=pl.String))
        if held.notes.is_empty():  # fewer dev notes than folds
            continue
        rest = dev.subset(pl.Series([note for note, fold in fold_of.items() if fold != k], dtype=pl.String))
        yield held, refit(sources, train.plus(rest), ontology=ontology)
        logger.info("dev fold %d/%d scored by sources refitted on train and the other folds", k + 1, folds)


def refit_dev_frames(stack: Stack, *, train: Corpus, dev: Corpus, plm: Scored, ontology: Ontology,
                     degraded_column: str | None = TEXT) -> dict[tuple[str, ...], pl.DataFrame]:
    """``dev_frames`` where each dev fold's notes have the candidates of the stack's sources
    refitted on train and the other folds (``dev_folds``): ``cross_fit``'s ``held_out``."""
    parts: dict[tuple[str, ...], list[pl.DataFrame]] = {}
    for held, sources in dev_folds(stack.sources, train=train, dev=dev, ontology=ontology):
        for names, frame in dev_frames(replace(stack, sources=sources), dev=held, plm=plm, degraded_column=degraded_column).items():
            parts.setdefault(names, []).append(frame)
    return {names: pl.concat(frames, how="diagonal_relaxed") for names, frames in parts.items()}
