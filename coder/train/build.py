"""``coder train`` end to end: the whole model from notes and codes, in one model folder.

PLM-ICD, its ONNX export, every candidate source the data allows (evidence spans and a second
language improve the model when given; they are never required), the rerankers with their
calibrated scores and cuts, the honest dev figures, and the card. Without dev notes a seeded
fifth of the training notes is held out as dev: PLM-ICD's early stopping, its thresholds and the
rerankers over its scores need notes it was not fitted on. Once the rerankers are fitted, the
candidate sources that learn from notes are fitted again on train and dev together (the dev
figures score each dev fold with sources fitted on train and the other folds).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from coder.candidates import CandidateSource
from coder.export.onnx import export_bundle
from coder.hashing import file_sha256
from coder.io.corpus import Corpus, read_notes
from coder.model.folder import (
    RERANKERS_DIR, SOURCES_DIR, TERMS_FILE, ModelConfig, encoder_record, read_card, read_config, read_plm_icd,
)
from coder.assembly import load_model
from coder.model.write import finalize
from coder.ontology import load_ontology
from coder.rerank.reranker import Reranker, fold_ids
from coder.rerank.score import STACK_PLM_TOP_K
from coder.schema import NOTE_ID, TEXT_ES
from coder.train.distil import with_sentence_layers
from coder.train.evaluation import evaluate_stacking
from coder.train.plm import TrainingOptions, finished, train
from coder.train.projection import corpus_aligners, project_corpus
from coder.train.stacking import add_plm_rerankers, dev_frames, fit_stacking, refit_dev_frames

logger = logging.getLogger(__name__)

DEV_FRACTION = 5  # without dev notes, one fold in five of the training notes is held out
SECOND_TEXT = (TEXT_ES,)  # other text columns the notes may hold (a second language), read when present


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The files ``coder train`` reads (the ``--*`` options); dev and evidence files are optional."""

    notes: Path
    codes: Path
    evidence: Path | None = None
    dev_notes: Path | None = None
    dev_codes: Path | None = None
    dev_evidence: Path | None = None
    unlabelled: Path | None = None
    """Notes without codes for unsupervised steps (word alignment of a second language)."""
    evidence_column: str = TEXT_ES
    """The notes column the evidence offsets point into."""

    def sha256(self) -> dict[str, str]:
        return {str(path): file_sha256(path) for path in dataclasses.astuple(self) if isinstance(path, Path)}


def read_corpora(inputs: Inputs, *, text_column: str, seed: int) -> tuple[Corpus, Corpus, str]:
    """(train, dev, how dev was made): the dev files, or a held-out fifth of train."""
    columns = {"text_columns": [text_column], "optional": [c for c in SECOND_TEXT if c != text_column],
               "evidence_column": inputs.evidence_column}
    train_corpus = Corpus.read(inputs.notes, inputs.codes, inputs.evidence, **columns)
    if inputs.dev_notes is not None and inputs.dev_codes is not None:
        return train_corpus, Corpus.read(inputs.dev_notes, inputs.dev_codes, inputs.dev_evidence, **columns), "dev files"
    held = fold_ids(train_corpus.notes[NOTE_ID], folds=DEV_FRACTION, seed=seed) == 0
    ids = train_corpus.notes[NOTE_ID]
    logger.info("no dev notes given: holding out %d of %d training notes as dev", int(held.sum()), ids.len())
    return (train_corpus.subset(ids.filter(~held)), train_corpus.subset(ids.filter(held)),
            f"a held-out fifth of the training notes (seed {seed})")


def with_projected_spans(train: Corpus, dev: Corpus, *, text_column: str, unlabelled: pl.DataFrame | None
                         ) -> tuple[Corpus, Corpus]:
    """``train`` and ``dev`` with their second-language spans projected onto ``text_column`` when
    ``train`` has spans there and none into ``text_column`` (``coder.train.projection``: aligners
    fitted on the parallel training and unlabelled notes, never dev's)."""
    second = [c for c in SECOND_TEXT if c != text_column and c in train.notes.columns and train.spans(c).height]
    if not second or train.spans(text_column).height:
        return train, dev
    logger.info("projecting %d evidence spans from %s onto %s", train.spans(second[0]).height, second[0], text_column)
    aligners = corpus_aligners(train.notes, unlabelled)

    def projected(corpus: Corpus) -> Corpus:
        if second[0] not in corpus.notes.columns:
            return corpus
        return corpus.with_spans(project_corpus(corpus.notes, corpus.spans(second[0]), aligners), column=text_column)

    return projected(train), projected(dev)


def build_model(*, inputs: Inputs, out: Path, text_column: str, encoder_path: Path, encoder_name: str,
                codes_file: Path | None, options: TrainingOptions, resume: bool, command: str,
                sources: Sequence[CandidateSource], folds: int = 5, sentence_layers: int = 0) -> ModelConfig:
    """Train PLM-ICD into ``out``, export it, and fit ``sources`` (unfitted: ``default_sources``, those the
    corpus cannot fit are left out) and the rerankers beside it; ``sentence_layers``: the dense search's
    note sentences go through a student of its encoder with that many layers (``coder.train.distil``)."""
    train_corpus, dev, dev_origin = read_corpora(inputs, text_column=text_column, seed=options.seed)
    unlabelled = read_notes(inputs.unlabelled, text_columns=[text_column], optional=SECOND_TEXT) if inputs.unlabelled else None
    train_corpus, dev = with_projected_spans(train_corpus, dev, text_column=text_column, unlabelled=unlabelled)
    if resume and finished(out, sources=inputs.sha256(), options=options, text_column=text_column,
                           encoder=encoder_record(encoder_path, name=encoder_name), codes_file=codes_file):
        logger.info("--resume: PLM-ICD in %s is trained and exported; fitting the candidate sources and rerankers", out)
        for part in (SOURCES_DIR, RERANKERS_DIR):  # the folder as export left it: PLM-ICD alone
            shutil.rmtree(out / part, ignore_errors=True)
        (out / TERMS_FILE).unlink(missing_ok=True)
        config, card = read_plm_icd(out)
        finalize(out, config, dataclasses.replace(card, evaluation={}))
    else:
        train(train=train_corpus, dev=dev, out=out, text_column=text_column, encoder_path=encoder_path,
              encoder_name=encoder_name, codes_file=codes_file, options=options, resume=resume, command=command,
              sources=inputs.sha256())
        export_bundle(out, dev=dev)
    ontology = load_ontology(codes_file=codes_file)
    texts = pl.concat([notes.select(text_column) for notes in (train_corpus.notes, unlabelled) if notes is not None])
    with tempfile.TemporaryDirectory() as scratch:  # the sentence layers until the dense search copies them
        sources = with_sentence_layers(sources, layers=sentence_layers, texts=texts, folder=Path(scratch), seed=options.seed)
        logger.info("fitting candidate sources %s and their rerankers into %s", [s.name for s in sources], out)
        stacking = fit_stacking(train=train_corpus, ontology=ontology, sources=sources, folds=folds, degraded_column=text_column)
        plm = load_model(out, device="cpu").scorer.score(dev.notes, top_n=STACK_PLM_TOP_K)
        frames = dev_frames(stacking, dev=dev, plm=plm, degraded_column=text_column)
        stacking = add_plm_rerankers(stacking, frames=frames, gold=dev.codes)
        held_out = refit_dev_frames(stacking, train=train_corpus, dev=dev, plm=plm, ontology=ontology, degraded_column=text_column)
        evaluation = evaluate_stacking(stacking, frames, held_out=held_out, gold=dev.codes, reranker=Reranker(),
                                       dev_origin=dev_origin, degraded_column=text_column)
        every_note = stacking.candidates.refit(train_corpus.plus(dev), ontology=ontology)
        config = dataclasses.replace(stacking, candidates=every_note).save(out, read_config(out))
    card = read_card(out)
    card = dataclasses.replace(card, evaluation=evaluation, training={**card.training, "dev": dev_origin, "folds": folds})
    return finalize(out, config, card)
