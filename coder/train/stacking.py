"""Fit the candidate sources and the reranker without leakage (stacked generalisation).

The reranker must learn from candidate features that look like the ones it will meet on unseen
notes. On training notes, in-sample lexicon reliabilities and classifier scores are too good, so
the training frame is built out of fold: train is cut into K folds, the lexicon and the stand-in
classifier are fitted on K-1 folds and the held-out fold is scored; the ontology search does not
learn from notes and is run once. The shipped sources are then refitted on all of train.

PLM-ICD scores have no out-of-fold version on train (the model was fitted on all of it). For
that source, ``cross_fit`` scores each dev note with a reranker fitted on the other dev folds
(sources fitted on train only), which is an honest dev figure; the shipped reranker is then
fitted on all dev candidates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from coder.candidates.features import (
    ABSENT_RANK, KEY, PLM_ICD, SOURCE_ORDER, CandidateBuilder, assemble, code_prior, with_labels,
)
from coder.candidates.lexicon import EvidenceLexicon
from coder.ontology import load_ontology
from coder.candidates.ontology_search import OntologySearch, ontology_terms
from coder.errors import InputFileError, UsageError
from coder.estimator import read_state
from coder.rerank.reranker import SCORE, Reranker, best_gates, f1_thresholds, gate_notes, ranked, resolve_hierarchy
from coder.schema import CODE, EVIDENCE_SCHEMA, NOTE_ID, PREDICTION_SCHEMA, SYSTEM, TEXT, TEXT_ES
from coder.candidates.tfidf import TfidfClassifier

logger = logging.getLogger(__name__)

ScoreSource = Callable[[pl.DataFrame], pl.DataFrame]  # notes -> (note_id, system, code, <source name>)


@dataclass(frozen=True)
class Corpus:
    """Labelled notes: notes (note_id, text columns), gold codes, evidence spans (may be empty)."""

    notes: pl.DataFrame
    codes: pl.DataFrame
    evidence: pl.DataFrame

    @classmethod
    def read(cls, folder: Path) -> Corpus:
        """``notes.parquet``, ``codes.parquet`` and ``evidence.parquet`` of a CodiEsp-shaped folder
        (without evidence the lexicon is not fitted)."""
        files = [folder / f"{name}.parquet" for name in ("notes", "codes", "evidence")]
        missing = [f.name for f in files[:2] if not f.is_file()]
        if missing:
            raise InputFileError(f"{folder} lacks {', '.join(missing)}: expected notes.parquet and codes.parquet")
        evidence = pl.read_parquet(files[2]) if files[2].is_file() else pl.DataFrame(schema=EVIDENCE_SCHEMA)
        return cls(pl.read_parquet(files[0]), pl.read_parquet(files[1]), evidence)

    def subset(self, note_ids: pl.Series) -> Corpus:
        def keep(frame: pl.DataFrame) -> pl.DataFrame:
            return frame.filter(pl.col(NOTE_ID).is_in(note_ids.implode()))

        return Corpus(keep(self.notes), keep(self.codes), keep(self.evidence))

    def text_only(self, column: str) -> Corpus:
        """The same corpus with only ``column`` as note text (degraded dumps)."""
        return Corpus(self.notes.select(NOTE_ID, column), self.codes, self.evidence)


def fold_ids(note_ids: pl.Series, *, folds: int, seed: int) -> np.ndarray:
    """[n_notes] fold number of each note: a seeded permutation cut into ``folds`` parts."""
    order = np.random.default_rng(seed).permutation(len(note_ids))
    fold = np.empty(len(note_ids), dtype=np.int64)
    fold[order] = np.arange(len(note_ids)) % folds
    return fold


def fit_builder(corpus: Corpus, *, search: OntologySearch | None) -> CandidateBuilder:
    """Fit the note-trained sources (lexicon when Spanish text and evidence exist, classifier)."""
    lexicon = None
    if TEXT_ES in corpus.notes.columns and corpus.evidence.height:
        lexicon = EvidenceLexicon().fit(corpus.notes, corpus.evidence)
    classifier = TfidfClassifier().fit(corpus.notes, corpus.codes)
    return CandidateBuilder(prior=code_prior(corpus.codes), lexicon=lexicon, search=search, classifier=classifier)


def out_of_fold_sources(corpus: Corpus, *, search: OntologySearch | None, search_candidates: pl.DataFrame | None,
                        folds: int = 5, seed: int = 0) -> list[tuple[dict[str, pl.DataFrame], pl.DataFrame]]:
    """Per fold: each source's candidates for the held-out notes, from sources fitted on the other
    folds, and the code prior of those other folds (``candidates.assemble`` inputs)."""
    fold = fold_ids(corpus.notes[NOTE_ID], folds=folds, seed=seed)
    out = []
    for k in range(folds):
        builder = fit_builder(corpus.subset(corpus.notes[NOTE_ID].filter(fold != k)), search=search)
        held = corpus.notes.filter(fold == k)
        out.append((builder.source_frames(held, search_candidates=search_candidates), builder.prior))
        logger.info("out-of-fold: fold %d/%d scored (%d notes)", k + 1, folds, held.height)
    return out


def out_of_fold(corpus: Corpus, *, search: OntologySearch | None, search_candidates: pl.DataFrame | None,
                folds: int = 5, seed: int = 0, sources: tuple[str, ...] | None = None) -> pl.DataFrame:
    """Labelled candidate frame of every training note, each built by sources not fitted on it;
    ``sources`` restricts the frame to some sources (ablations)."""
    parts = out_of_fold_sources(corpus, search=search, search_candidates=search_candidates, folds=folds, seed=seed)
    return labelled_frame(parts, codes=corpus.codes, sources=sources)


def labelled_frame(parts: list[tuple[dict[str, pl.DataFrame], pl.DataFrame]], *, codes: pl.DataFrame,
                   sources: tuple[str, ...] | None = None) -> pl.DataFrame:
    """Assemble out-of-fold source frames (all sources, or only ``sources``) and label them."""
    frames = [assemble({n: f for n, f in found.items() if sources is None or n in sources}, prior=prior)
              for found, prior in parts]
    return with_labels(pl.concat(frames, how="diagonal_relaxed"), codes)


def cross_fit(frame: pl.DataFrame, *, reranker: Reranker, folds: int = 5, seed: int = 0) -> pl.DataFrame:
    """``frame`` (labelled) with ``score`` from rerankers that never saw the scored note."""
    notes = frame[NOTE_ID].unique().sort()
    fold_of = dict(zip(notes.to_list(), fold_ids(notes, folds=folds, seed=seed).tolist()))
    frame = frame.with_columns(pl.col(NOTE_ID).replace_strict(fold_of).alias("_fold"))
    parts = []
    for k in range(folds):
        model = Reranker(**reranker.get_params()).fit(frame.filter(pl.col("_fold") != k).drop("_fold"))
        parts.append(model.predict(frame.filter(pl.col("_fold") == k).drop("_fold")))
    return pl.concat(parts).sort(list(KEY))


@dataclass(frozen=True)
class Cuts:
    """Per-system score cuts of one reranker, chosen on notes it was not fitted on."""

    thresholds: dict[str, float]  # F1-best: candidates at or above are ``above_threshold``
    gates: dict[str, float]  # MAP-best: a (note, system) whose best score is under it gets no codes


def choose_cuts(frame: pl.DataFrame, *, reranker: Reranker, gold: pl.DataFrame, seed: int = 1) -> Cuts:
    """Fit ``reranker`` on four fifths of the notes of a labelled frame and choose cuts on the rest."""
    notes = frame[NOTE_ID].unique().sort()
    held = notes.filter(fold_ids(notes, folds=5, seed=seed) == 0).implode()
    model = Reranker(**reranker.get_params()).fit(frame.filter(~pl.col(NOTE_ID).is_in(held)))
    scored = model.predict(frame.filter(pl.col(NOTE_ID).is_in(held)))
    return Cuts(f1_thresholds(scored, gold=gold), best_gates(scored, gold=gold))


@dataclass(frozen=True)
class Stack:
    """A fitted stack: candidate sources, and per source set a reranker and its cuts."""

    builder: CandidateBuilder
    rerankers: dict[tuple[str, ...], Reranker]
    cuts: dict[tuple[str, ...], Cuts]
    hierarchy_penalty: float = 1.0

    def score(self, notes: pl.DataFrame, *, extra: dict[str, pl.DataFrame] | None = None, gate: bool = False) -> pl.DataFrame:
        """Candidate frame of ``notes`` with calibrated ``score`` and ``above_threshold``, using the
        reranker fitted on exactly the sources these notes allow (English-only dumps skip the
        lexicon). With ``gate``, a note whose best code of a system scores under that system's gate
        gets no code of it: CodiEsp MAP rises (the scorer leaves unranked notes out) but some notes
        with gold codes get none, so it is off by default."""
        sources = self.builder.sources_for(notes.columns, extra=tuple(extra or {}))
        if sources not in self.rerankers:
            raise KeyError(f"no reranker for sources {sources}; fitted for {sorted(self.rerankers)}")
        cuts = self.cuts[sources]
        scored = resolve_hierarchy(self.rerankers[sources].predict(self.builder.build(notes, extra=extra)),
                                   penalty=self.hierarchy_penalty)
        if gate:
            scored = gate_notes(scored, gates=cuts.gates)
        threshold = pl.col(SYSTEM).replace_strict(cuts.thresholds, default=1.0, return_dtype=pl.Float64)
        return scored.with_columns((pl.col(SCORE) >= threshold).alias("above_threshold"))

    def predictions(self, notes: pl.DataFrame, *, describe: Callable[[str, str], str],
                    extra: dict[str, pl.DataFrame] | None = None, top_k: int = 50, gate: bool = False) -> pl.DataFrame:
        """PREDICTION_SCHEMA rows (the ``coder predict`` output): the ``top_k`` codes per note and
        system by ``score``; ``describe(code, system)`` gives the description; ``source`` joins
        the sources that proposed the code."""
        scored = ranked(self.score(notes, extra=extra, gate=gate)).filter(pl.col("rank") <= top_k)
        sources = [name for name in SOURCE_ORDER if f"{name}_rank" in scored.columns]
        proposed = [pl.when(pl.col(f"{name}_rank") < ABSENT_RANK).then(pl.lit(name)) for name in sources]
        return scored.with_columns(
            pl.struct(SYSTEM, CODE).map_elements(lambda row: describe(row[CODE], row[SYSTEM]), return_dtype=pl.String)
            .alias("description"),
            pl.concat_str(proposed, separator="+", ignore_nulls=True).alias("source"),
        ).select(PREDICTION_SCHEMA.names()).cast(dict(PREDICTION_SCHEMA))

    def save(self, path: Path) -> None:
        """``1_candidates/`` (sources), ``2_rerankers/<source+source>/``, ``stack.json`` (cuts)."""
        self.builder.save(path / "1_candidates")
        for sources, reranker in self.rerankers.items():
            reranker.save(path / "2_rerankers" / "+".join(sources))
        meta = {"hierarchy_penalty": self.hierarchy_penalty,
                "rerankers": {"+".join(s): asdict(self.cuts[s]) for s in self.rerankers}}
        (path / "stack.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, path: Path) -> Stack:
        meta = read_state(path, "stack.json", what="reranker stack")
        rerankers = {tuple(name.split("+")): Reranker.load(path / "2_rerankers" / name) for name in meta["rerankers"]}
        cuts = {tuple(name.split("+")): Cuts(**saved) for name, saved in meta["rerankers"].items()}
        return cls(CandidateBuilder.load(path / "1_candidates"), rerankers, cuts, meta["hierarchy_penalty"])


def fit_stack(*, train: Corpus, search: OntologySearch, out_dir: Path | None = None, folds: int = 5, seed: int = 0,
              reranker: Reranker | None = None, degraded_column: str | None = TEXT,
              search_candidates: pl.DataFrame | None = None) -> Stack:
    """Fit sources out of fold on ``train``, a reranker (and its cuts) on the out-of-fold frame,
    then the shipped sources on all of train. With ``degraded_column``, also a reranker for
    dumps that only have that text column. Saved into ``out_dir`` when given."""
    reranker = reranker or Reranker()
    if search_candidates is None:
        search_candidates = search.candidates(train.notes)
    corpora = [train] + ([train.text_only(degraded_column)] if degraded_column else [])
    builder = fit_builder(train, search=search)
    rerankers, cuts = {}, {}
    for corpus in corpora:
        frame = out_of_fold(corpus, search=search, search_candidates=search_candidates, folds=folds, seed=seed)
        sources = builder.sources_for(corpus.notes.columns)
        rerankers[sources] = Reranker(**reranker.get_params()).fit(frame)
        cuts[sources] = choose_cuts(frame, reranker=reranker, gold=train.codes)
    stack = Stack(builder, rerankers, cuts)
    if out_dir is not None:
        stack.save(out_dir)
    return stack


def train_stack(*, train_dir: Path, out_dir: Path, folds: int = 5, codes_file: Path | None = None,
                model: str = "hgb", dev_dir: Path | None = None, plm_model: Path | None = None) -> Stack:
    """``fit_stack`` on a CodiEsp-shaped folder, searching the ontology (with ``codes_file``).
    With ``dev_dir`` and ``plm_model`` (a PLM-ICD model folder), also the rerankers that take
    its scores, fitted on dev (``add_dev_reranker``)."""
    if (dev_dir is None) != (plm_model is None):
        raise UsageError("--dev and --plm-model go together: PLM-ICD scores are stacked on dev notes")
    return stack_corpora(train=Corpus.read(train_dir), out_dir=out_dir, folds=folds, codes_file=codes_file, model=model,
                         dev=Corpus.read(dev_dir) if dev_dir is not None else None, plm_model=plm_model)


def stack_corpora(*, train: Corpus, out_dir: Path, folds: int = 5, codes_file: Path | None = None, model: str = "hgb",
                  dev: Corpus | None = None, plm_model: Path | None = None) -> Stack:
    """``train_stack`` on corpora already read (``coder train --evidence`` calls this)."""
    ontology = load_ontology(codes_file)
    stack = fit_stack(train=train, search=OntologySearch().fit(ontology_terms(ontology)), out_dir=out_dir, folds=folds,
                      reranker=Reranker(model=model))
    if dev is None:
        return stack
    from coder.model.scorer import load_predictor

    plm = predictor_source(load_predictor(plm_model, ontology=ontology, rerank=False))(dev.notes)
    return add_dev_reranker(stack, dev=dev, extra={PLM_ICD: plm}, reranker=Reranker(model=model), out_dir=out_dir)


STACK_PLM_TOP_K = 50  # PLM-ICD codes per note and system that the stack reranks (fit and predict alike)


def predictor_source(predictor, *, top_k: int = STACK_PLM_TOP_K) -> ScoreSource:
    """A PLM-ICD ``coder.model.scorer.Predictor`` as a candidate source: its top ``top_k`` codes per
    note and system with their scores in the ``plm_icd`` column."""

    def scores(notes: pl.DataFrame) -> pl.DataFrame:
        predictions = predictor.predict(notes, top_k=top_k).predictions
        return predictions.select(NOTE_ID, SYSTEM, CODE, pl.col(SCORE).alias(PLM_ICD))

    return scores


def add_dev_reranker(stack: Stack, *, dev: Corpus, extra: dict[str, pl.DataFrame], reranker: Reranker | None = None,
                     degraded_column: str | None = TEXT, out_dir: Path | None = None) -> Stack:
    """Protocol b: rerankers for the stack's sources plus ``extra`` (e.g. PLM-ICD dev scores, which
    have no out-of-fold train version), fitted on dev candidates built by the train-fitted sources.
    Report such a stack's dev figures with ``cross_fit``, never with this reranker."""
    reranker = reranker or Reranker()
    rerankers, cuts = dict(stack.rerankers), dict(stack.cuts)
    for notes in [dev.notes] + ([dev.notes.select(NOTE_ID, degraded_column)] if degraded_column else []):
        frame = with_labels(stack.builder.build(notes, extra=extra), dev.codes)
        sources = stack.builder.sources_for(notes.columns, extra=tuple(extra))
        rerankers[sources] = Reranker(**reranker.get_params()).fit(frame)
        cuts[sources] = choose_cuts(frame, reranker=reranker, gold=dev.codes)
    out = Stack(stack.builder, rerankers, cuts, stack.hierarchy_penalty)
    if out_dir is not None:
        out.save(out_dir)
    return out
