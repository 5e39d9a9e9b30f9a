"""A new candidate source is one class behind the protocol plus one registration: it is fitted by the
stacking, saved in the model folder, listed in its config, loaded, and its codes reach the output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl

from coder import candidates
from coder.candidates.tfidf import TfidfClassifier
from coder.candidates.base import CandidateSource
from coder.estimator import read_state
from coder.model.folder import read_card, read_config
from coder.model.write import finalize
from coder.assembly import load_model
from coder.pipeline import code_batch
from coder.rerank.reranker import Reranker
from coder.schema import CM, CODE, NOTE_ID, PLM_ICD, SYSTEM, TEXT
from coder.train.stacking import add_plm_rerankers, dev_frames, fit_stacking


class KeywordSource(CandidateSource):
    """Proposes the codes seen in training with a note that holds ``keyword``."""

    learns_from_notes = True

    def __init__(self, *, name: str = "keyword", text_column: str = TEXT, keyword: str = "asthma"):
        self.name = name
        self.text_column = text_column
        self.keyword = keyword

    def fit(self, corpus, *, ontology=None) -> KeywordSource:
        hits = corpus.notes.filter(pl.col(self.text_column).str.to_lowercase().str.contains(self.keyword))[NOTE_ID]
        self.codes_ = sorted(set(corpus.codes.filter(pl.col(NOTE_ID).is_in(hits.implode()))[CODE]))
        return self

    def candidates(self, notes: pl.DataFrame) -> pl.DataFrame:
        hits = notes.filter(pl.col(self.text_column).str.to_lowercase().str.contains(self.keyword))[NOTE_ID].to_list()
        rows = [(note, CM, code, 1.0) for note in hits for code in self.codes_]
        return pl.DataFrame(rows, schema={NOTE_ID: pl.String, SYSTEM: pl.String, CODE: pl.String, self.name: pl.Float64},
                            orient="row")

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "keyword.json").write_text(json.dumps({"params": self.get_params(), "codes": self.codes_}))

    @classmethod
    def load(cls, path: Path) -> KeywordSource:
        state = read_state(path, "keyword.json", what="keyword source")
        self = cls(**state["params"])
        self.codes_ = state["codes"]
        return self


def test_a_new_source_flows_from_training_to_the_output(monkeypatch, tiny_model_path, tiny_corpus, tiny_ontology, tmp_path):
    monkeypatch.setitem(candidates.SOURCES, "keyword", KeywordSource)  # the one registration line
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_path, folder)
    sources = [KeywordSource(), TfidfClassifier(min_df=1, top_k=3)]
    stacking = fit_stacking(train=tiny_corpus, ontology=tiny_ontology, sources=sources, folds=2,
                            reranker=Reranker(model="logistic"))
    plm = load_model(folder, device="cpu").scorer.score(tiny_corpus.notes, top_n=50)
    frames = dev_frames(stacking, dev=tiny_corpus, plm=plm)
    stacking = add_plm_rerankers(stacking, frames=frames, gold=tiny_corpus.codes, reranker=Reranker(model="logistic"))
    finalize(folder, stacking.save(folder, read_config(folder)), read_card(folder))

    model = load_model(folder, device="cpu")
    assert model.stack.names == ("keyword", "tfidf")
    assert ("keyword", "tfidf", PLM_ICD) in model.ranking.rerankers
    predictions = code_batch(model, tiny_corpus.notes.select(NOTE_ID, TEXT), top_k=10).predictions
    asthma = predictions.filter(pl.col(NOTE_ID) == "n2", pl.col(CODE) == "J45.909")
    assert asthma.height == 1 and "keyword" in asthma["source"].item().split("+")
