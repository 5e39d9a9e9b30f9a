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
notes are fitted again on train and dev (``CandidateStack.refit``): more labelled notes, more codes and phrases
reached. The honest dev figure mirrors that: ``cross_fit`` scores each dev note with a reranker
fitted on the other dev folds, over candidates from sources fitted on train and those folds
(``refit_dev_frames``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl
from sklearn.base import clone

from coder.candidates import CandidateSource, kind_of
from coder.candidates.features import code_prior, with_labels
from coder.candidates.dense_search import DenseSearch
from coder.candidates.lexicon import EvidenceLexicon
from coder.candidates.mined import MinedLexicon
from coder.candidates.ontology_search import OntologySearch
from coder.candidates.stack import CandidateStack, SourceFrames
from coder.candidates.term_match import TermMatch
from coder.candidates.tfidf import TfidfClassifier
from coder.io.atomic import write_parquet
from coder.io.corpus import Corpus
from coder.languages import language as check_language
from coder.model.folder import PRIOR_FILE, TERMS_FILE, ModelConfig, RerankerSpec, SourceSpec
from coder.model.scorer import Scored
from coder.ontology import Ontology
from coder.rerank.reranker import Reranker, fold_ids
from coder.schema import KEY, NOTE_ID, PLM_ICD, SYSTEM, TEXT, TEXT_ES

logger = logging.getLogger(__name__)

def default_sources(*, text_column: str = TEXT, language: str = "en", sentence_encoder: Path | None = None,
                    sentence_layers: Path | None = None) -> list[CandidateSource]:
    """The sources ``coder train`` tries, unfitted, in evidence priority (those the corpus cannot fit
    are left out when fitting): the lexicons of coders' spans (the second language's, then the main
    text's, own or projected), the lexicons mined from notes and codes, the ontology searches (TF-IDF
    cosine, TF-IDF coverage, the term match, then dense), the TF-IDF classifier. ``text_column`` and
    ``language``: the notes' main text and its language (the ontology's descriptions are English:
    other languages mine without them, and the term match and the dense search, English words and
    an English sentence encoder against English terms, are left out).
    ``sentence_encoder``: the dense search's encoder, a local Hugging Face folder (None: the packaged
    all-MiniLM-L6-v2); ``sentence_layers``: a layers file of a student of that encoder for the note sentences
    (``coder train`` distils one, ``coder.train.distil``; None: the encoder's own layers)."""
    check_language(language)  # an unknown language fails now, not after PLM-ICD's training
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
           DenseSearch(name="dense", text_column=text_column, encoder=str(sentence_encoder) if sentence_encoder else None,
                       sentence_layers=str(sentence_layers) if sentence_layers else None)]
          if language == "en" else []),
        TfidfClassifier(name="tfidf", text_column=text_column),
    ]


def out_of_fold(corpus: Corpus, *, fold: Sequence[int], fit: Callable[[Corpus], CandidateStack]
                ) -> Iterator[tuple[Corpus, Corpus, CandidateStack]]:
    """Per fold of ``fold`` (one fold number per note of ``corpus``, in its order; a fold without notes is
    skipped): the held-out notes, the other notes, and the stack ``fit`` returns for the other notes, to
    score the held-out ones with (as ``sklearn.model_selection.cross_val_predict`` is over an estimator)."""
    ids, fold = corpus.notes[NOTE_ID], pl.Series(fold)
    for k in sorted(set(fold.to_list())):
        rest = corpus.subset(ids.filter(fold != k))
        yield corpus.subset(ids.filter(fold == k)), rest, fit(rest)
        logger.info("out of fold: fold %d of %d, sources fitted on the other folds", k + 1, fold.max() + 1)


def train_folds(stack: CandidateStack, corpus: Corpus, *, ontology: Ontology, known: SourceFrames, folds: int = 5,
                seed: int = 0) -> list[tuple[SourceFrames, pl.DataFrame]]:
    """Per fold of ``corpus`` (``fold_ids``): the held-out notes' frames from ``stack`` (fitted) with the
    sources that learn from notes refitted on the other folds, and the code prior of those folds.
    ``known``: the candidates of the sources fitted once (``CandidateStack.fitted_once``), found once
    over all the notes."""
    parts = out_of_fold(corpus, fold=fold_ids(corpus.notes[NOTE_ID], folds=folds, seed=seed),
                        fit=lambda rest: stack.refit(rest, ontology=ontology))
    return [(fitted.frames(held.notes, known=known), code_prior(rest.codes)) for held, rest, fitted in parts]


def labelled_frame(stack: CandidateStack, parts: list[tuple[SourceFrames, pl.DataFrame]], *, codes: pl.DataFrame,
                   sources: Sequence[str] | None = None) -> pl.DataFrame:
    """``stack``'s features of out-of-fold frames (all sources, or only ``sources``), labelled."""
    frames = [stack.features({n: f for n, f in found.items() if sources is None or n in sources}, prior=prior)
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
class Stacking:
    """What stacked generalisation fitted: the candidate sources, a reranker per set of sources, and the
    training code prior."""

    candidates: CandidateStack
    rerankers: dict[tuple[str, ...], Reranker]
    prior: pl.DataFrame
    out_of_fold: dict[tuple[str, ...], pl.DataFrame]
    """The labelled out-of-fold train frame each of ``rerankers`` was fitted on (not saved)."""

    def save(self, folder: Path, config: ModelConfig) -> ModelConfig:
        """Write ``terms.parquet`` (once for the sources that read terms), ``sources/<name>/``,
        ``rerankers/<a+b>/`` and ``rerankers/prior.parquet`` into a model folder; returns ``config`` with
        them as its components."""
        sources = self.candidates.sources
        terms = shared_terms([source.terms_ for source in sources if source.reads_terms])
        if terms is not None:
            write_parquet(folder / TERMS_FILE, terms, durable=False)
        specs = tuple(SourceSpec(name=s.name, kind=kind_of(s), text_column=s.text_column) for s in sources)
        for spec, source in zip(specs, sources, strict=True):
            source.save(folder / spec.folder)
        rerankers = tuple(RerankerSpec(sources=names) for names in self.rerankers)
        for spec in rerankers:
            self.rerankers[spec.sources].save(folder / spec.folder)
        (folder / PRIOR_FILE).parent.mkdir(parents=True, exist_ok=True)
        write_parquet(folder / PRIOR_FILE, self.prior, durable=False)
        return config.with_components(sources=specs, rerankers=rerankers, terms=terms is not None)


def shared_terms(fitted: Sequence[pl.DataFrame]) -> pl.DataFrame | None:
    """The one table of ontology terms that holds what each source in ``fitted`` read, as its rows of the
    systems it read (``stored_terms``): the sources of one model read the same ontology."""
    if not fitted:
        return None
    terms = pl.concat(fitted).unique(maintain_order=True)
    for own in fitted:
        if not terms.filter(pl.col(SYSTEM).is_in(own[SYSTEM].unique().to_list())).equals(own):
            raise ValueError("the candidate sources read different ontology terms: fit them on one ontology")
    return terms


def fit_stacking(*, train: Corpus, ontology: Ontology, sources: Sequence[CandidateSource] | None = None, folds: int = 5,
                 seed: int = 0, reranker: Reranker | None = None, degraded_column: str | None = TEXT) -> Stacking:
    """Fit sources out of fold on ``train``, a reranker (with its cuts) on the out-of-fold frame,
    then the shipped sources on all of train. With ``degraded_column``, also a reranker for
    dumps that only have that text column."""
    reranker = reranker or Reranker()
    fitted = CandidateStack(tuple(sources or default_sources())).fit(train, ontology=ontology)
    known = fitted.fitted_once().candidates(train.notes)
    rerankers, frames = {}, {}
    for corpus in [train] + ([train.text_only(degraded_column)] if degraded_column else []):
        usable = fitted.usable(corpus.notes.columns)
        parts = train_folds(usable, corpus, ontology=ontology, known=known, folds=folds, seed=seed)
        frames[usable.names] = labelled_frame(usable, parts, codes=corpus.codes)
        rerankers[usable.names] = clone(reranker).fit(frames[usable.names], gold=corpus.codes)
    return Stacking(fitted, rerankers, code_prior(train.codes), frames)


def dev_frames(stacking: Stacking, *, dev: Corpus, plm: Scored, degraded_column: str | None = TEXT
               ) -> dict[tuple[str, ...], pl.DataFrame]:
    """Labelled dev candidate frames with PLM-ICD's (``plm``: its scores of the dev notes), per set of
    sources a dump allows: every column, and only ``degraded_column``. The sources were fitted on
    train; PLM-ICD has no out-of-fold train scores, so its rerankers learn from these."""
    out = {}
    for notes in [dev.notes] + ([dev.notes.select(NOTE_ID, degraded_column)] if degraded_column else []):
        frames = stacking.candidates.frames(notes, plm=plm)
        out[tuple(frames)] = with_labels(stacking.candidates.features(frames, prior=stacking.prior, plm=plm), dev.codes)
    return out


def without_plm(stacking: Stacking, sources: tuple[str, ...]) -> pl.DataFrame | None:
    """The out-of-fold train frame of ``sources`` less PLM-ICD: the extra rows of their reranker with
    PLM-ICD (``Reranker.fit``), or None when there is none."""
    return stacking.out_of_fold.get(tuple(name for name in sources if name != PLM_ICD))


def add_plm_rerankers(stacking: Stacking, *, frames: dict[tuple[str, ...], pl.DataFrame], gold: pl.DataFrame,
                      reranker: Reranker | None = None) -> Stacking:
    """Rerankers for the sources plus PLM-ICD, fitted on the dev ``frames`` (``dev_frames``) and the
    out-of-fold train frame of the same sources. Report their dev figures with ``cross_fit`` (same
    extra rows), never with these rerankers."""
    reranker = reranker or Reranker()
    fitted = {sources: clone(reranker).fit(frame, gold=gold, extra_rows=without_plm(stacking, sources))
              for sources, frame in frames.items()}
    return replace(stacking, rerankers={**stacking.rerankers, **fitted})


def dev_folds(stack: CandidateStack, *, train: Corpus, dev: Corpus, ontology: Ontology, folds: int = 5,
              seed: int = 0) -> Iterator[tuple[Corpus, Corpus, CandidateStack]]:
    """``out_of_fold`` over ``cross_fit``'s dev folds: ``stack`` with the sources that learn from notes
    refitted on train and the other folds, for each fold's notes: how sources refitted on train and all
    of dev (what ``coder train`` ships) meet notes they never saw."""
    fold_of = note_folds(dev.notes[NOTE_ID], folds=folds, seed=seed)
    yield from out_of_fold(dev, fold=dev.notes[NOTE_ID].replace_strict(fold_of).to_list(),
                           fit=lambda rest: stack.refit(train.plus(rest), ontology=ontology))


def refit_dev_frames(stacking: Stacking, *, train: Corpus, dev: Corpus, plm: Scored, ontology: Ontology,
                     degraded_column: str | None = TEXT) -> dict[tuple[str, ...], pl.DataFrame]:
    """``dev_frames`` where each dev fold's notes have the candidates of the sources refitted on train and
    the other folds (``dev_folds``): ``cross_fit``'s ``held_out``."""
    parts: dict[tuple[str, ...], list[pl.DataFrame]] = {}
    for held, _, refitted in dev_folds(stacking.candidates, train=train, dev=dev, ontology=ontology):
        for names, frame in dev_frames(replace(stacking, candidates=refitted), dev=held, plm=plm,
                                       degraded_column=degraded_column).items():
            parts.setdefault(names, []).append(frame)
    return {names: pl.concat(frames, how="diagonal_relaxed") for names, frames in parts.items()}
