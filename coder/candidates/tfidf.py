"""A TF-IDF + one-vs-rest ridge classifier: the stand-in classifier source.

It gives the candidate stack a classifier column while PLM-ICD scores are not available (and a
cheap out-of-fold classifier for stacking). All per-code ridge regressions are solved at once in
their dual form ([n_notes, n_notes] system), which is quick; one-vs-rest logistic regression was
far slower and scored lower on dev.
Persisted as JSON (vocabulary, labels) and npz (idf, training matrix, dual coefficients), no pickle.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from scipy import sparse
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.preprocessing import normalize

from coder.candidates.base import CandidateSource
from coder.estimator import read_state
from coder.io.atomic import write_atomically, write_text
from coder.rank import score_rank, within_top
from coder.schema import CODE, NOTE_ID, SYSTEM, TEXT

if TYPE_CHECKING:
    from coder.io.corpus import Corpus

logger = logging.getLogger(__name__)


class TfidfClassifier(CandidateSource):
    """Per-code ridge regressions over word (1-2)-gram TF-IDF of one text column.

    Parameters
    ----------
    name: the score column written by ``candidates`` (the candidate source's name).
    text_column: the notes column that is read.
    top_k: candidates kept per (note, system).
    min_df: a word n-gram must occur in this many training notes (at most a tenth of them: tiny corpora keep their words).
    alpha: ridge penalty (on l2-normalised TF-IDF rows).
    """

    learns_from_notes = True

    def __init__(self, *, name: str = "tfidf", text_column: str = TEXT, top_k: int = 30, min_df: int = 2, alpha: float = 0.3):
        self.text_column = text_column
        self.name = name
        self.top_k = top_k
        self.min_df = min_df
        self.alpha = alpha

    def can_fit(self, corpus: Corpus) -> bool:
        return self.text_column in corpus.notes.columns and corpus.codes.height > 0

    def fit(self, corpus: Corpus, *, ontology: Any = None) -> TfidfClassifier:
        """Learn from the corpus's notes (note_id, text column) and gold codes (GOLD_SCHEMA)."""
        notes, codes = corpus.notes, corpus.codes
        min_df = max(1, min(self.min_df, notes.height // 10))
        counter = CountVectorizer(ngram_range=(1, 2), min_df=min_df, strip_accents="unicode", lowercase=True)
        counts = counter.fit_transform(notes[self.text_column].fill_null("").to_list())
        self.vocabulary_ = {term: int(i) for term, i in counter.vocabulary_.items()}
        df = np.bincount(counts.indices, minlength=counts.shape[1])
        self.idf_ = np.log((1 + counts.shape[0]) / (1 + df)) + 1.0
        x = self._weigh(counts)
        labels = codes.select(SYSTEM, CODE).unique().sort(SYSTEM, CODE)
        self.labels_ = [tuple(row) for row in labels.iter_rows()]
        row_of = {note_id: i for i, note_id in enumerate(notes[NOTE_ID].to_list())}
        label_of = {label: j for j, label in enumerate(self.labels_)}
        y = np.zeros((x.shape[0], len(self.labels_)), dtype=bool)
        for note_id, code, system in codes.select(NOTE_ID, CODE, SYSTEM).iter_rows():
            if note_id in row_of:
                y[row_of[note_id], label_of[(system, code)]] = True
        self.train_matrix_ = x
        self.label_mean_ = y.mean(axis=0)
        gram = (x @ x.T).toarray()
        # float32: half the model folder's file; scores move by about a millionth of their size
        self.dual_coef_ = np.linalg.solve(gram + self.alpha * np.eye(len(gram)), y - self.label_mean_).astype(np.float32)
        logger.info("tfidf classifier: %d labels, %d terms, %d notes", len(self.labels_), x.shape[1], x.shape[0])
        return self

    def _weigh(self, counts: sparse.csr_matrix) -> sparse.csr_matrix:
        """[n_notes, n_terms] sublinear tf * idf, rows l2-normalised."""
        counts = counts.astype(np.float64)
        counts.data = 1.0 + np.log(counts.data)
        return normalize(counts @ sparse.diags(self.idf_))

    def decision_function(self, notes: pl.DataFrame) -> np.ndarray:
        """[n_notes, n_labels] ridge score of each label in ``labels_`` (about 0 absent, 1 present)."""
        self.check_fitted()
        counter = CountVectorizer(ngram_range=(1, 2), strip_accents="unicode", lowercase=True, vocabulary=self.vocabulary_)
        x = self._weigh(counter.transform(notes[self.text_column].fill_null("").to_list()))
        # sparse [n_notes, n_train] times dense: each note's row is summed over its own entries in their
        # order, whatever the batch (a dense BLAS product rounds a row differently at another batch height,
        # and labels of the same training notes, tied exactly, would then swap ranks)
        return (x @ self.train_matrix_.T) @ self.dual_coef_ + self.label_mean_

    def candidates(self, notes: pl.DataFrame) -> pl.DataFrame:
        """The ``top_k`` labels per (note, system) by ``score_rank``: note_id, system, code, <name>."""
        proba = self.decision_function(notes)
        systems = np.array([s for s, _ in self.labels_])
        frames = []
        for system in np.unique(systems):
            cols = np.flatnonzero(systems == system)
            note, top = np.nonzero(within_top(proba[:, cols], self.top_k))
            frames.append(pl.DataFrame({
                NOTE_ID: notes[NOTE_ID].gather(note),
                SYSTEM: system,
                CODE: [self.labels_[c][1] for c in cols[top]],
                self.name: proba[note, cols[top]],
            }, schema={NOTE_ID: pl.String, SYSTEM: pl.String, CODE: pl.String, self.name: pl.Float64}))
        return pl.concat(frames).filter(score_rank(self.name) <= self.top_k)

    def save(self, path: Path) -> None:
        """Write ``tfidf.json`` (parameters, vocabulary, labels) and ``tfidf.npz`` into ``path``."""
        path.mkdir(parents=True, exist_ok=True)
        state = {"params": self.get_params(), "vocabulary": self.vocabulary_, "labels": self.labels_}
        write_text(path / "tfidf.json", json.dumps(state, ensure_ascii=False), durable=False)
        x = self.train_matrix_
        arrays = {"idf": self.idf_, "dual_coef": self.dual_coef_, "label_mean": self.label_mean_,
                  "data": x.data, "indices": x.indices, "indptr": x.indptr, "shape": np.array(x.shape)}
        write_atomically(path / "tfidf.npz", lambda handle: np.savez_compressed(handle, **arrays), durable=False)

    @classmethod
    def load(cls, path: Path) -> TfidfClassifier:
        state = read_state(path, "tfidf.json", what="TF-IDF classifier", also=("tfidf.npz",))
        arrays = np.load(path / "tfidf.npz", allow_pickle=False)
        self = cls(**state["params"])
        self.vocabulary_ = state["vocabulary"]
        self.labels_ = [tuple(label) for label in state["labels"]]
        self.idf_, self.dual_coef_, self.label_mean_ = arrays["idf"], arrays["dual_coef"], arrays["label_mean"]
        self.train_matrix_ = sparse.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=tuple(arrays["shape"]))
        return self
