"""Learned combination of candidate sources: one probabilistic classifier per ICD-10 system.

Input is the candidate frame of ``coder.candidates.features`` (one row per note, system, code, with each
source's score and rank, match quality, negation, code prior and hierarchy features). Output
``score`` is the probability that the candidate is a gold code of its note, so one threshold
per system works. Two model families: gradient-boosted trees (``hgb``) and logistic regression
on standardised features (``logistic``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from coder.audit.metrics import average_precision, clean_ranking
from coder.candidates.features import KEY, LABEL, extensions, feature_columns, top_codes
from coder.errors import ModelBundleError, NotFittedError, UsageError
from coder.estimator import ParamsMixin, read_state
from coder.hashing import file_sha256
from coder.schema import CODE, NOTE_ID, SYSTEM

logger = logging.getLogger(__name__)

SCORE = "score"
MODELS = ("hgb", "logistic")
GATE_GRID = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)


class Reranker(ParamsMixin):
    """Per-system probability that a candidate code is gold.

    Parameters
    ----------
    model: ``hgb`` (HistGradientBoostingClassifier) or ``logistic`` (LogisticRegression).
    max_iter: boosting rounds (hgb) or solver iterations (logistic).
    learning_rate: hgb shrinkage.
    max_leaf_nodes: hgb tree size.
    l2: hgb leaf regularisation, or the inverse of logistic's C.
    random_state: seed of hgb's feature binning subsample.
    n_threads: OpenMP and BLAS threads for fitting and scoring; None uses all cores. The default 1 is
        faster here: the trees are small, and OpenMP barriers on a busy machine cost 10x or more.
    """

    def __init__(self, *, model: str = "hgb", max_iter: int = 150, learning_rate: float = 0.05,
                 max_leaf_nodes: int = 15, l2: float = 1.0, random_state: int = 0, n_threads: int | None = 1):
        self.model = model
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.l2 = l2
        self.random_state = random_state
        self.n_threads = n_threads

    def _estimator(self):
        if self.model == "hgb":
            return HistGradientBoostingClassifier(max_iter=self.max_iter, learning_rate=self.learning_rate,
                                                  max_leaf_nodes=self.max_leaf_nodes, l2_regularization=self.l2,
                                                  early_stopping=False, random_state=self.random_state)
        if self.model == "logistic":
            return LogisticRegression(C=1.0 / self.l2, max_iter=self.max_iter)
        raise UsageError(f"reranker model must be one of {MODELS}, got {self.model!r}")

    def fit(self, frame: pl.DataFrame, *, features: list[str] | None = None) -> Reranker:
        """Fit on a labelled candidate frame (``label`` column, see ``candidates.with_labels``);
        ``features`` defaults to every feature column of the frame."""
        self.features_ = features or feature_columns(frame)
        self.models_: dict[str, object] = {}
        self.scaling_: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for (system,), part in frame.group_by(SYSTEM, maintain_order=True):
            x, y = self._matrix(part, system, fitting=True), part[LABEL].to_numpy()
            if len(np.unique(y)) < 2:  # nothing to learn: every candidate gets the one observed rate
                self.models_[system] = float(y.mean())
                continue
            with threadpool_limits(limits=self.n_threads):
                self.models_[system] = self._estimator().fit(x, y)
            logger.info("reranker %s: %d candidates, %d positive, %d features", system, len(y), int(y.sum()), x.shape[1])
        return self

    def _matrix(self, frame: pl.DataFrame, system: str, *, fitting: bool = False) -> np.ndarray:
        """[n_candidates, n_features] float matrix; logistic features standardised with training stats."""
        x = frame.select(pl.col(c).cast(pl.Float64) for c in self.features_).to_numpy()
        if self.model != "logistic":
            return x
        if fitting:
            self.scaling_[system] = (x.mean(axis=0), x.std(axis=0) + 1e-9)
        mean, std = self.scaling_[system]
        return (x - mean) / std

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
        with threadpool_limits(limits=self.n_threads):
            return model.predict_proba(self._matrix(part, system))[:, 1]

    def save(self, path: Path) -> None:
        """``reranker.json`` (parameters, features; logistic coefficients). Trees go to
        ``<system>.joblib`` because scikit-learn has no text format for fitted boosted trees;
        their sha256 is recorded in the JSON and checked on load."""
        path.mkdir(parents=True, exist_ok=True)
        state: dict = {"params": self.get_params(), "features": self.features_, "models": {}}
        for system, model in self.models_.items():
            if isinstance(model, float):
                state["models"][system] = {"constant": model}
            elif self.model == "logistic":
                mean, std = self.scaling_[system]
                state["models"][system] = {"coef": model.coef_[0].tolist(), "intercept": float(model.intercept_[0]),
                                           "mean": mean.tolist(), "std": std.tolist()}
            else:
                import joblib

                file = path / f"{_slug(system)}.joblib"
                joblib.dump(model, file)
                state["models"][system] = {"file": file.name, "sha256": file_sha256(file)}
        (path / "reranker.json").write_text(json.dumps(state, indent=1))

    @classmethod
    def load(cls, path: Path) -> Reranker:
        state = read_state(path, "reranker.json", what="reranker")
        self = cls(**state["params"])
        self.features_, self.models_, self.scaling_ = state["features"], {}, {}
        for system, saved in state["models"].items():
            if "constant" in saved:
                model = saved["constant"]
            elif self.model == "logistic":
                model = LogisticRegression()
                model.coef_ = np.asarray([saved["coef"]])
                model.intercept_ = np.asarray([saved["intercept"]])
                model.classes_ = np.asarray([0, 1])
                self.scaling_[system] = (np.asarray(saved["mean"]), np.asarray(saved["std"]))
            else:
                import joblib

                tree_file = path / saved["file"]
                if file_sha256(tree_file) != saved["sha256"]:
                    raise ModelBundleError(f"{tree_file} does not match the sha256 in reranker.json: re-save the reranker")
                model = joblib.load(tree_file)
            self.models_[system] = model
        return self


def resolve_hierarchy(frame: pl.DataFrame, *, penalty: float = 1.0) -> pl.DataFrame:
    """Demote a code when a more specific candidate of the same note reads the same evidence.

    A parent (``R10``) and its child (``R10.9``) proposed from overlapping spans are one finding
    coded twice: the parent's score is multiplied by ``penalty`` (1 keeps both as they are).
    On CodiEsp dev the data says keep both (penalty 0.5: CM MAP -0.0003, PCS -0.001; penalty 0:
    -0.003 / -0.03: PCS coders often give a 4-axis prefix and a full code for one span), hence
    the default 1; the reranker already sees ``has_child`` / ``has_parent``.
    """
    pairs = extensions(frame.select(*KEY, "evidence_start", "evidence_end")).filter(
        (pl.col("evidence_start_child") < pl.col("evidence_end")) & (pl.col("evidence_start") < pl.col("evidence_end_child")))
    demoted = pairs.select(*KEY).unique().with_columns(pl.lit(penalty).alias("_factor"))
    return (frame.join(demoted, on=list(KEY), how="left")
            .with_columns((pl.col(SCORE) * pl.col("_factor").fill_null(1.0)).alias(SCORE)).drop("_factor"))


def gate_notes(scored: pl.DataFrame, *, gates: dict[str, float]) -> pl.DataFrame:
    """Drop every (note, system) whose best score is under its system's gate: such a note most
    likely has no code of that system (many notes have no procedure), and an empty ranking says
    so; CodiEsp's scorer then leaves the note out instead of counting AP 0."""
    best = pl.col(SCORE).max().over(NOTE_ID, SYSTEM)
    return scored.filter(best >= pl.col(SYSTEM).replace_strict(gates, default=0.0, return_dtype=pl.Float64))


def best_gates(scored: pl.DataFrame, *, gold: pl.DataFrame, grid: tuple[float, ...] = GATE_GRID) -> dict[str, float]:
    """Per system, the gate in ``grid`` with the best MAP over the notes of ``scored``, where a
    note with gold codes that the gate leaves unranked counts AP 0. (CodiEsp's scorer would
    leave it out, which rewards gating away hard notes that do have codes: a gate chosen that
    way dropped 52 of 222 dev notes with procedures.)"""
    out = {}
    for system in scored[SYSTEM].unique(maintain_order=True):
        part = scored.filter(pl.col(SYSTEM) == system)
        truth: dict[str, set[str]] = {}
        for note_id, code in gold.filter(pl.col(SYSTEM) == system).select(NOTE_ID, CODE).iter_rows():
            truth.setdefault(note_id, set()).add(code.lower())
        notes = part[NOTE_ID].unique().to_list()
        maps = []
        for gate in grid:
            rankings = top_codes(gate_notes(part, gates={system: gate}), score=SCORE).get(system, {})
            aps = [average_precision(clean_ranking(rankings[n]), truth.get(n, set())) if n in rankings else 0.0
                   for n in notes if n in rankings or n in truth]
            maps.append(float(np.mean(aps)) if aps else 0.0)
        out[system] = grid[int(np.argmax(maps))]
    return out


def ranked(frame: pl.DataFrame) -> pl.DataFrame:
    """Sort by note, system and descending score, and add ``rank`` (1-based per note and system)."""
    return frame.sort([NOTE_ID, SYSTEM, SCORE], descending=[False, False, True]).with_columns(
        pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(NOTE_ID, SYSTEM).alias("rank"))


def _slug(system: str) -> str:
    return system.lower().replace("-", "_")


def f1_thresholds(scored: pl.DataFrame, *, gold: pl.DataFrame) -> dict[str, float]:
    """Per system, the ``score`` cut that maximises micro F1 of (note, code) pairs over the notes
    in ``scored`` (labelled); gold codes never proposed count as misses (``gold``: GOLD_SCHEMA)."""
    out = {}
    notes = scored[NOTE_ID].unique().implode()
    for (system,), part in scored.group_by(SYSTEM, maintain_order=True):
        n_gold = gold.filter((pl.col(SYSTEM) == system) & pl.col(NOTE_ID).is_in(notes)).select(NOTE_ID, CODE).unique().height
        order = part.sort(SCORE, descending=True)
        tp = np.cumsum(order[LABEL].to_numpy())
        f1 = 2 * tp / (np.arange(1, len(tp) + 1) + n_gold)
        out[system] = float(order[SCORE][int(f1.argmax())])
    return out
