"""``coder train`` end to end: PLM-ICD, then (with coders' evidence spans) its ONNX export and the
candidate sources and rerankers, all in one model folder whose config lists every component."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from coder.errors import UsageError
from coder.export.onnx import export_bundle
from coder.io.corpus import Corpus
from coder.model.folder import ModelConfig, read_config
from coder.model.write import finalize
from coder.model.load import load_model
from coder.ontology import load_ontology
from coder.rerank.score import STACK_PLM_TOP_K
from coder.schema import TEXT_ES
from coder.train.plm import TrainingOptions, train
from coder.train.stacking import add_plm_rerankers, fit_stack

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
    """Train PLM-ICD into ``out``; with ``evidence``, also export it and fit the candidate sources and
    rerankers into the same folder.

    The rerankers that take PLM-ICD scores are fitted on dev (PLM-ICD has no out-of-fold train
    scores), so ``evidence`` needs ``dev_notes`` and ``dev_codes``.
    """
    if evidence is not None and (dev_notes is None or dev_codes is None):
        raise UsageError("--evidence needs --dev-notes and --dev-codes: the reranker over PLM-ICD scores is fitted on dev")
    config = train(
        notes=notes, codes=codes, out=out, dev_notes=dev_notes, dev_codes=dev_codes, text_column=text_column,
        encoder_path=encoder_path, encoder_name=encoder_name, codes_file=codes_file, options=options, resume=resume,
        command=command,
    )
    if evidence is None:
        return config
    export_bundle(out, dev_notes=dev_notes, dev_codes=dev_codes)
    logger.info("fitting the candidate sources and rerankers into %s", out)
    ontology = load_ontology(codes_file=codes_file)
    train_corpus = Corpus.read(notes, codes, evidence, text_columns=[text_column], optional=[TEXT_ES])
    dev = Corpus.read(dev_notes, dev_codes, dev_evidence, text_columns=[text_column], optional=[TEXT_ES])
    stack = fit_stack(train=train_corpus, ontology=ontology, folds=folds)
    plm = load_model(out, device="cpu").scorer.score(dev.notes, top_n=STACK_PLM_TOP_K).candidates
    stack = add_plm_rerankers(stack, dev=dev, plm=plm)
    sources, rerankers = stack.save(out)
    return finalize(out, dataclasses.replace(read_config(out), sources=sources, rerankers=rerankers))
