"""Learned combination of candidate sources: one probabilistic classifier per ICD-10 system.

Input is the candidate frame of ``coder.candidates.features`` (one row per note, system, code,
with each source's score and rank, match quality, negation, code prior and hierarchy features).
Output ``score`` is the probability that the candidate is a gold code of its note, so one
threshold per system works; the thresholds are chosen when fitting, on notes the scoring model
did not see. Two model families: gradient-boosted trees (``hgb``, scored as ONNX,
``coder.rerank.trees``) and logistic regression on standardised features (``logistic``).
Saved as JSON and ONNX: loading a reranker runs no code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.special import expit
from sklearn.base import clone

from coder.candidates.features import LABEL, feature_columns
from coder.errors import ModelBundleError, NotFittedError, UsageError
from coder.estimator import ParamsMixin, read_state
from coder.hashing import file_sha256
from coder.io.atomic import write_atomically, write_text
from coder.metrics import best_f1_cut
from coder.rerank.trees import tree_probability, trees_session, trees_to_onnx
from coder.schema import CODE, NOTE_ID, SCORE, SYSTEM

logger = logging.getLogger(__name__)

MODELS = ("hgb", "logistic")
STATE_FILE = "reranker.json"


class Reranker(ParamsMixin):
    """Per-system probability that a candidate code is gold, and the per-system F1-best cut.

    Parameters
    ----------
    model: ``hgb`` (HistGradientBoostingClassifier) or ``logistic`` (LogisticRegression).
    max_iter: boosting rounds (hgb) or solver iterations (logistic).
    learning_rate: hgb shrinkage.
    max_leaf_nodes: hgb tree size.
    l2: hgb leaf regularisation, or the inverse of logistic's C.
    random_state: seed of hgb's feature binning subsample.
    n_threads: OpenMP and BLAS threads for fitting; None uses all cores. The default 1 is faster
        here: the trees are small, and OpenMP barriers on a busy machine cost more than they save.
    cut_seed: seed of the fifth of the notes held out to choose the thresholds.
    """

    def __init__(self, *, model: str = "hgb", max_iter: int = 150, learning_rate: float = 0.05,
                 max_leaf_nodes: int = 15, l2: float = 1.0, random_state: int = 0, n_threads: int | None = 1,
                 cut_seed: int = 1):
        self.model = model
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.l2 = l2
        self.random_state = random_state
        self.n_threads = n_threads
        self.cut_seed = cut_seed

    def _estimator(self):
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression

        if self.model == "hgb":
            return HistGradientBoostingClassifier(max_iter=self.max_iter, learning_rate=self.learning_rate,
                                                  max_leaf_nodes=self.max_leaf_nodes, l2_regularization=self.l2,
                                                  early_stopping=False, random_state=self.random_state)
        if self.model == "logistic":
            return LogisticRegression(C=1.0 / self.l2, max_iter=self.max_iter)
        raise UsageError(f"reranker model must be one of {MODELS}, got {self.model!r}")

    def fit(self, frame: pl.DataFrame, *, gold: pl.DataFrame | None = None, features: list[str] | None = None,
            extra_rows: pl.DataFrame | None = None) -> Reranker:
        """Fit on a labelled candidate frame (``label`` column, see ``candidates.features.with_labels``);
        ``features`` defaults to every feature column of the frame. With ``gold`` (GOLD_SCHEMA:
        every gold code, also those no source proposed), also choose each system's threshold: the
        F1-best cut of a reranker fitted on four fifths of the notes, on the other fifth.
        ``extra_rows``: more labelled candidates (of other notes) to learn from, never to choose cuts
        on; features they lack are missing values (e.g. out-of-fold training candidates, which
        have no PLM-ICD scores: PLM-ICD was fitted on those notes)."""
        self.features_ = features or feature_columns(frame)
        rows = frame if extra_rows is None else pl.concat([extra_rows, frame], how="diagonal_relaxed")
        self.models_ = {system: self._fit_system(part, system) for (system,), part in rows.group_by(SYSTEM, maintain_order=True)}
        self.thresholds_: dict[str, float] = {}
        if gold is not None:
            notes = frame[NOTE_ID].unique().sort()
            held = notes.filter(fold_ids(notes, folds=5, seed=self.cut_seed) == 0).implode()
            part = clone(self).fit(frame.filter(~pl.col(NOTE_ID).is_in(held)), features=self.features_, extra_rows=extra_rows)
            self.thresholds_ = f1_thresholds(part.predict(frame.filter(pl.col(NOTE_ID).is_in(held))), gold=gold)
        return self

    def _fit_system(self, part: pl.DataFrame, system: str) -> Any:
        """The fitted state of one system: a constant rate, logistic coefficients, or an ONNX tree session."""
        from threadpoolctl import threadpool_limits

        x, y = self._matrix(part), part[LABEL].to_numpy()
        if len(np.unique(y)) < 2:  # nothing to learn: every candidate gets the one observed rate
            return float(y.mean())
        logger.info("reranker %s: %d candidates, %d positive, %d features", system, len(y), int(y.sum()), x.shape[1])
        if self.model == "logistic":  # a missing value counts as the feature's mean (trees learn where it goes)
            mean, std = np.nanmean(x, axis=0), np.nanstd(x, axis=0) + 1e-9
            with threadpool_limits(limits=self.n_threads):
                fitted = self._estimator().fit(np.nan_to_num((x - mean) / std), y)
            return _Logistic(fitted.coef_[0], float(fitted.intercept_[0]), mean, std)
        with threadpool_limits(limits=self.n_threads):
            fitted = self._estimator().fit(x, y)
        if all(predictor.nodes["is_leaf"][0] for (predictor,) in fitted._predictors):  # no tree ever split
            return float(fitted.predict_proba(x[:1])[0, 1])
        return _Trees(trees_to_onnx(fitted, n_features=x.shape[1]).SerializeToString())

    def _matrix(self, frame: pl.DataFrame) -> np.ndarray:
        """[n_candidates, n_features] float64 matrix (null: NaN)."""
        # row-major: the tree sessions read rows (a column-major matrix would be copied there)
        return frame.select(pl.col(c).cast(pl.Float64) for c in self.features_).to_numpy(order="c")

    def predict(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` with ``score`` (probability); systems the reranker has no model for are dropped."""
        if not hasattr(self, "models_"):
            raise NotFittedError("Reranker is not fitted: call fit(frame) or Reranker.load(path)")
        missing = [c for c in self.features_ if c not in frame.columns]
        if missing:
            raise UsageError(f"candidate frame lacks reranker features {missing}: build it with the same sources")
        parts = []
        for (system,), part in frame.group_by(SYSTEM, maintain_order=True):
            if system in self.models_:
                parts.append(part.with_columns(pl.Series(SCORE, self._proba(part, system))))
        return pl.concat(parts) if parts else frame.with_columns(pl.lit(None, dtype=pl.Float64).alias(SCORE)).clear()

    def _proba(self, part: pl.DataFrame, system: str) -> np.ndarray:
        """[n_candidates] probability that each candidate is gold."""
        model = self.models_[system]
        if isinstance(model, float):
            return np.full(part.height, model)
        return model.probability(self._matrix(part))

    def save(self, path: Path) -> None:
        """``reranker.json`` (parameters, features, thresholds, constants and logistic coefficients)
        and one ``<system>.onnx`` per tree model, whose sha256 the JSON records."""
        path.mkdir(parents=True, exist_ok=True)
        models: dict[str, Any] = {}
        for system, model in self.models_.items():
            if isinstance(model, float):
                models[system] = {"constant": model}
            elif isinstance(model, _Logistic):
                models[system] = model.to_json()
            else:
                file = path / f"{system.lower().replace('-', '_')}.onnx"
                write_atomically(file, lambda handle, data=model.onnx: handle.write(data), durable=False)
                models[system] = {"file": file.name, "sha256": file_sha256(file)}
        state = {"params": self.get_params(), "features": self.features_, "thresholds": self.thresholds_, "models": models}
        write_text(path / STATE_FILE, json.dumps(state, indent=1), durable=False)

    @classmethod
    def load(cls, path: Path) -> Reranker:
        state = read_state(path, STATE_FILE, what="reranker")
        self = cls(**state["params"])
        self.features_, self.thresholds_, self.models_ = state["features"], state["thresholds"], {}
        for system, saved in state["models"].items():
            if "constant" in saved:
                self.models_[system] = float(saved["constant"])
            elif "coef" in saved:
                self.models_[system] = _Logistic.from_json(saved)
            else:
                file = path / saved["file"]
                if not file.is_file() or file_sha256(file) != saved["sha256"]:
                    raise ModelBundleError(f"{file} is missing or does not match the sha256 in {STATE_FILE}: refit the reranker")
                self.models_[system] = _Trees(file.read_bytes(), n_features=len(self.features_), source=str(file))
        return self


class _Logistic:
    """A fitted logistic regression on standardised features: p = sigmoid(((x - mean) / std) . coef + intercept)."""

    def __init__(self, coef: np.ndarray, intercept: float, mean: np.ndarray, std: np.ndarray):
        self.coef, self.intercept, self.mean, self.std = np.asarray(coef), intercept, np.asarray(mean), np.asarray(std)

    def probability(self, x: np.ndarray) -> np.ndarray:
        return expit(((x - self.mean) / self.std) @ self.coef + self.intercept)

    def to_json(self) -> dict[str, Any]:
        return {"coef": self.coef.tolist(), "intercept": self.intercept, "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> _Logistic:
        return cls(np.asarray(saved["coef"]), float(saved["intercept"]), np.asarray(saved["mean"]), np.asarray(saved["std"]))


class _Trees:
    """Boosted trees as ONNX bytes and their onnxruntime session."""

    def __init__(self, onnx: bytes, *, n_features: int | None = None, source: str = "tree model"):
        self.onnx = onnx
        self.session = trees_session(onnx, n_features=n_features, source=source)

    def probability(self, x: np.ndarray) -> np.ndarray:
        return tree_probability(self.session, x)


def fold_ids(note_ids: pl.Series, *, folds: int, seed: int) -> np.ndarray:
    """[n_notes] fold number of each note: a seeded permutation cut into ``folds`` parts."""
    order = np.random.default_rng(seed).permutation(len(note_ids))
    fold = np.empty(len(note_ids), dtype=np.int64)
    fold[order] = np.arange(len(note_ids)) % folds
    return fold


def f1_thresholds(scored: pl.DataFrame, *, gold: pl.DataFrame) -> dict[str, float]:
    """Per system, the ``score`` cut that maximises micro F1 of (note, code) pairs over the notes
    in ``scored`` (labelled); gold codes never proposed count as misses (``gold``: GOLD_SCHEMA)."""
    out = {}
    notes = scored[NOTE_ID].unique().implode()
    for (system,), part in scored.group_by(SYSTEM, maintain_order=True):
        n_gold = gold.filter((pl.col(SYSTEM) == system) & pl.col(NOTE_ID).is_in(notes)).select(NOTE_ID, CODE).unique().height
        out[system] = best_f1_cut(part[SCORE].to_numpy(), part[LABEL].to_numpy(), n_gold=n_gold)
    return out
