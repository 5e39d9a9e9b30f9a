"""Gradient-boosted trees as ONNX: saved without pickle, scored by onnxruntime.

A fitted binary ``HistGradientBoostingClassifier`` becomes one ONNX graph: an ``ai.onnx.ml``
``TreeEnsemble`` (sum of the trees' leaf values, float64) plus the baseline log-odds, then a
sigmoid, so the file alone gives the probability. Loading it runs no code (an ONNX file is data),
and onnxruntime scores a batch's candidates faster than scikit-learn on one thread.
Decisions are the same as scikit-learn's (``x <= threshold`` goes left, NaN goes where the
split sent missing values); the sum differs from scikit-learn's order only in the last bits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from coder.errors import ModelBundleError
from coder.model.session import GRAPH_IR_VERSION, GRAPH_OPSET

INPUT, OUTPUT = "features", "probability"
_ML_OPSET = 5  # TreeEnsemble is ai.onnx.ml opset 5
_BRANCH_LEQ = 0


def trees_to_onnx(estimator: Any, *, n_features: int) -> onnx.ModelProto:
    """The ONNX graph of a fitted binary ``HistGradientBoostingClassifier`` on float64 features."""
    if getattr(estimator, "n_trees_per_iteration_", 1) != 1 or estimator.is_categorical_ is not None:
        raise ValueError("only binary classifiers on numeric features can be written as ONNX trees")
    baseline = float(np.asarray(estimator._baseline_prediction).ravel()[0])
    arrays: dict[str, list] = {name: [] for name in (
        "nodes_featureids", "nodes_splits", "nodes_truenodeids", "nodes_trueleafs", "nodes_falsenodeids",
        "nodes_falseleafs", "nodes_missing_value_tracks_true", "leaf_weights", "tree_roots")}
    for (predictor,) in estimator._predictors:
        nodes = predictor.nodes
        if nodes["is_leaf"][0]:  # a tree that never split adds a constant
            baseline += float(nodes["value"][0])
            continue
        _add_tree(nodes, arrays)
    node = helper.make_node(
        "TreeEnsemble", [INPUT], ["raw"], domain="ai.onnx.ml", aggregate_function=1, post_transform=0, n_targets=1,
        leaf_targetids=[0] * len(arrays["leaf_weights"]),
        nodes_modes=numpy_helper.from_array(np.full(len(arrays["nodes_splits"]), _BRANCH_LEQ, dtype=np.uint8)),
        nodes_splits=numpy_helper.from_array(np.asarray(arrays.pop("nodes_splits"), dtype=np.float64)),
        leaf_weights=numpy_helper.from_array(np.asarray(arrays.pop("leaf_weights"), dtype=np.float64)),
        **arrays,
    )
    graph = helper.make_graph(
        [node, helper.make_node("Add", ["raw", "baseline"], ["logit"]), helper.make_node("Sigmoid", ["logit"], [OUTPUT])],
        "reranker_trees",
        [helper.make_tensor_value_info(INPUT, TensorProto.DOUBLE, [None, n_features])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.DOUBLE, [None, 1])],
        initializer=[numpy_helper.from_array(np.asarray([baseline], dtype=np.float64), "baseline")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", GRAPH_OPSET), helper.make_opsetid("ai.onnx.ml", _ML_OPSET)])
    model.ir_version = GRAPH_IR_VERSION
    onnx.checker.check_model(model)
    return model


def _add_tree(nodes: np.ndarray, arrays: dict[str, list]) -> None:
    """Append one scikit-learn tree (its ``nodes`` record array) to the TreeEnsemble attribute lists:
    interior nodes and leaves are numbered in two separate sequences, as the operator wants."""
    interior = np.flatnonzero(~nodes["is_leaf"].astype(bool))
    leaves = np.flatnonzero(nodes["is_leaf"].astype(bool))
    interior_id = {int(i): len(arrays["nodes_featureids"]) + k for k, i in enumerate(interior)}
    leaf_id = {int(i): len(arrays["leaf_weights"]) + k for k, i in enumerate(leaves)}
    arrays["leaf_weights"].extend(nodes["value"][leaves].tolist())
    arrays["tree_roots"].append(interior_id[0])
    for i in interior:
        for side, child in (("true", int(nodes["left"][i])), ("false", int(nodes["right"][i]))):
            is_leaf = bool(nodes["is_leaf"][child])
            arrays[f"nodes_{side}nodeids"].append(leaf_id[child] if is_leaf else interior_id[child])
            arrays[f"nodes_{side}leafs"].append(int(is_leaf))
        arrays["nodes_featureids"].append(int(nodes["feature_idx"][i]))
        arrays["nodes_splits"].append(float(nodes["num_threshold"][i]))
        arrays["nodes_missing_value_tracks_true"].append(int(nodes["missing_go_to_left"][i]))


def trees_session(model: bytes, *, n_features: int | None = None, source: str = "tree model") -> ort.InferenceSession:
    """An onnxruntime session of a tree model's ONNX bytes, checked to read ``n_features`` features."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # a batch's candidates take milliseconds; threads would only contend
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for unreadable models
        raise ModelBundleError(f"{source} is not a readable ONNX tree model ({type(error).__name__})") from None
    width = session.get_inputs()[0].shape[-1]
    if n_features is not None and width != n_features:
        raise ModelBundleError(f"{source} reads {width} features, its reranker lists {n_features}; refit the reranker")
    return session


def tree_probability(session: ort.InferenceSession, features: np.ndarray) -> np.ndarray:
    """[n] probability of the positive class for ``features`` [n, n_features] (float64)."""
    return session.run(None, {INPUT: np.ascontiguousarray(features, dtype=np.float64)})[0][:, 0]
