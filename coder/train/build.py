"""``coder train`` end to end: PLM-ICD, then (with coders' evidence spans) its ONNX export and the
candidate stack (evidence lexicon, ontology search, TF-IDF, reranker) in the same model folder."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import polars as pl

from coder.model.folder import CODE_LIST_FILE, ModelConfig
from coder.errors import UsageError
from coder.export.onnx import export_bundle
from coder.model.scorer import STACK_DIR
from coder.schema import EVIDENCE_SCHEMA
from coder.train.stacking import Corpus, stack_corpora
from coder.train.plm import TrainingOptions, train

logger = logging.getLogger(__name__)


def build_model(
    *,
    notes: Path,
    codes: Path,
    out: Path,
    dev_notes: Path | None,
    dev_codes: Path | None,
    evidence: Path | None,
    dev_evidence: Path | None,
    text_column: str,
    encoder_path: Path,
    encoder_name: str,
    codes_file: Path | None,
    options: TrainingOptions,
    resume: bool,
    command: str,
    folds: int = 5,
) -> ModelConfig:
    """Train PLM-ICD into ``out``; with ``evidence``, also export it and fit the stack into ``out/stack``.

    The stack's rerankers that take PLM-ICD scores are fitted on dev (PLM-ICD has no out-of-fold
    train scores), so ``evidence`` needs ``dev_notes`` and ``dev_codes``.
    """
    if evidence is not None and (dev_notes is None or dev_codes is None):
        raise UsageError("--evidence needs --dev-notes and --dev-codes: the reranker over PLM-ICD scores is fitted on dev")
    config = train(
        notes=notes, codes=codes, out=out, dev_notes=dev_notes, dev_codes=dev_codes, text_column=text_column,
        encoder_path=encoder_path, encoder_name=encoder_name, codes_file=codes_file, options=options, resume=resume,
        command=command,
    )
    if codes_file is not None:  # predict validates the model's codes with the list it was trained with
        shutil.copyfile(codes_file, out / CODE_LIST_FILE)
    if evidence is None:
        return config
    export_bundle(out, dev_notes=dev_notes, dev_codes=dev_codes)
    logger.info("fitting the candidate stack into %s", out / STACK_DIR)
    stack_corpora(
        train=_corpus(notes, codes, evidence), dev=_corpus(dev_notes, dev_codes, dev_evidence),
        out_dir=out / STACK_DIR, folds=folds, codes_file=codes_file, plm_model=out,
    )
    return config


def _corpus(notes: Path, codes: Path, evidence: Path | None) -> Corpus:
    spans = pl.read_parquet(evidence) if evidence is not None else pl.DataFrame(schema=EVIDENCE_SCHEMA)
    return Corpus(pl.read_parquet(notes), pl.read_parquet(codes), spans)
