"""The dense search's sentence encoder: a BERT folder's weights as an int8 ONNX graph, built without torch.

``sentence_encoder`` gives the int8 ONNX file the dense search runs (``coder.candidates.dense_search``),
made on first use once per encoder and library versions and kept in the cache folder
(``coder.ontology.cache``); the encoder folder's own tokenizer (``coder.model.chunking.WordPieces``) feeds it. The graph
is written node by node from ``config.json`` and ``model.safetensors`` (``bert_graph``), as the dense
search's products are: predicting never imports torch, and reading the weights runs no code (no pickle).

Input ``input_ids`` / ``attention_mask`` [batch, length] (both axes dynamic); output
``sentence_vector`` [batch, hidden]: the last hidden states averaged over the real tokens, scaled to unit
length (sentence-transformers' recipe for all-MiniLM-L6-v2). The fp32 graph matches Hugging Face's
``BertModel`` within 1e-4 per component (tests). MatMul weights are quantised per output channel (per
tensor, the int8 vectors were clearly further from fp32), and the embedding tables too, as PLM-ICD's
int8 file does; the int8 vectors are checked against the fp32 graph's before the file is kept.

A smaller student of the encoder (``coder train`` distils one for the note sentences) is a layers file
(``write_layers``): its transformer layers alone, over the encoder's own embeddings, which it was
trained with frozen. Its matrices are kept in int8 per output channel, as the int8 file quantises them
anyway, so that a model folder carries a quarter of their float32 size.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from coder.errors import ExportParityError, ModelBundleError
from coder.hashing import file_sha256
from coder.io.atomic import write_atomically
from coder.io.progress import announce, quiet
from coder.model.chunking import WordPieces
from coder.model.session import GRAPH_IR_VERSION, create_session
from coder.ontology.cache import cache_dir, cache_key, write_cache

logger = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "sentence_vector"
GRAPH_VERSION = 1  # bump when the graph ``bert_graph`` writes changes: cached files are made again
INT8_MIN_COSINE = 0.98  # the int8 file's vectors against the fp32 graph's on the check sentences
BUILD_S = 15  # what the build announces it takes (all-MiniLM-L6-v2 on a server core)
ATTENTION_OPSET = 23  # the first with the Attention operator (one node a layer, as torch exports it)
LAYER_PREFIX = "encoder.layer."  # Hugging Face's names of BERT's transformer layers
MASKED = -1e9  # added to the attention scores of padded keys: their softmax weight is exactly 0
_CHECK = ["Fever and productive cough.", "Type 2 diabetes mellitus with hyperglycemia, treated with insulin glargine",
          "CT"]


@dataclass(frozen=True)
class BuiltEncoder:
    """The int8 ONNX file of an encoder, and the cache key it is kept under (what the term vectors made
    with it are keyed on: the encoder's files and the versions that build it)."""

    model: bytes
    key: str


def sentence_encoder(encoder: Path, *, sha256: str, layers: Path | None = None) -> BuiltEncoder:
    """``encoder`` (a local Hugging Face BERT folder, its files' ``sha256``), with the transformer layers of
    the layers file ``layers`` when given, as int8 ONNX: from the cache folder, else built (announced,
    ``build_sentence_encoder``) and cached; an unwritable cache folder costs a warning and a build on every
    run (``write_cache``)."""
    versions = {"graph": GRAPH_VERSION, "onnx": version("onnx"), "onnxruntime": onnxruntime.__version__}
    student = {"layers": file_sha256(layers)} if layers else {}
    key = cache_key(sources=[], salt=json.dumps({"encoder": sha256, **student, **versions}))
    stem = f"sentence-{student.get('layers', sha256)[:12]}"  # a student's files never replace its encoder's
    file = cache_dir() / f"{stem}-{key[:12]}.onnx"
    if file.is_file():
        return BuiltEncoder(file.read_bytes(), key)
    announce("the dense search's sentence encoder as int8 ONNX", seconds=BUILD_S)
    model = build_sentence_encoder(encoder, layers=layers)
    write_cache(file, lambda handle: handle.write(model), what="the sentence encoder", stale=f"{stem}-*.onnx")
    return BuiltEncoder(model, key)


def build_sentence_encoder(encoder: Path, *, layers: Path | None = None) -> bytes:
    """``encoder`` (a local Hugging Face BERT folder; its layers those of ``layers`` when given) as int8
    ONNX, after checking the int8 vectors against the fp32 graph's (``ExportParityError``)."""
    pieces = WordPieces.read(encoder)
    tokenizer = pieces.backend
    tokenizer.enable_padding(pad_id=pieces.pad_token_id)  # padded rows: the mask is exercised
    rows = tokenizer.encode_batch(_CHECK)
    feed = {"input_ids": np.array([row.ids for row in rows], dtype=np.int64),
            "attention_mask": np.array([row.attention_mask for row in rows], dtype=np.int64)}
    with tempfile.TemporaryDirectory() as folder:
        fp32, int8 = Path(folder) / "sentence.onnx", Path(folder) / "sentence.int8.onnx"
        onnx.save(bert_graph(encoder, layers=layers), str(fp32))
        reference = create_session(fp32, device="cpu").run(None, feed)[0]
        # the quantiser logs every tensor, and advice to pre-process the graph, on the root logger
        with quiet(None, level=logging.ERROR):
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul", "Gather"])
        model = int8.read_bytes()
    cosine = float(np.min((create_session(model, device="cpu").run(None, feed)[0] * reference).sum(axis=1)))
    if cosine < INT8_MIN_COSINE:
        raise ExportParityError(f"int8 sentence encoder of {encoder}: cosine to fp32 {cosine:.3f} < {INT8_MIN_COSINE}")
    logger.info("sentence encoder %s built as int8 ONNX (cosine to fp32 >= %.4f)", encoder, cosine)
    return model


def bert_graph(encoder: Path, *, layers: Path | None = None) -> onnx.ModelProto:
    """The fp32 graph of a Hugging Face BERT folder (``config.json``, ``model.safetensors``) in eval mode,
    mean pooled and scaled to unit length; every token's type is 0, as the dense search feeds one text a row.
    ``layers``: a layers file (``write_layers``) whose transformer layers replace the encoder's."""
    config = bert_config(encoder)
    weight = _bert_weights(encoder)
    if layers is not None:
        student = read_layers(layers)
        weight, config = _with_layers(weight, student), {**config, "num_hidden_layers": layer_count(student)}
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    eps = float(config.get("layer_norm_eps", 1e-12))
    graph = _Graph()

    def linear(x: str, prefix: str) -> str:
        product = graph.node("MatMul", x, graph.constant(f"{prefix}.weight", weight(f"{prefix}.weight").T))
        return graph.node("Add", product, graph.constant(f"{prefix}.bias", weight(f"{prefix}.bias")))

    def layer_norm(x: str, prefix: str) -> str:
        return graph.node("LayerNormalization", x, graph.constant(f"{prefix}.weight", weight(f"{prefix}.weight")),
                          graph.constant(f"{prefix}.bias", weight(f"{prefix}.bias")), axis=-1, epsilon=eps)

    # embeddings: words, then the first `length` rows of the positions table, token type 0 added in
    length = graph.node("Shape", "input_ids", start=1, end=2)
    table = weight("embeddings.position_embeddings.weight") + weight("embeddings.token_type_embeddings.weight")[0]
    positions = graph.node("Slice", graph.constant("position_embeddings", table),
                           graph.constant("zero", np.array([0], dtype=np.int64)), length,
                           graph.constant("axis_0", np.array([0], dtype=np.int64)))
    words = graph.node("Gather", graph.constant("word_embeddings", weight("embeddings.word_embeddings.weight")), "input_ids")
    x = graph.node("Add", words, positions)
    x = layer_norm(x, "embeddings.LayerNorm")
    # padded keys masked
    mask = graph.node("Cast", "attention_mask", to=TensorProto.FLOAT)
    bias = graph.node("Mul", graph.node("Sub", graph.constant("f_one", np.array(1.0, dtype=np.float32)), mask),
                      graph.constant("masked", np.array(MASKED, dtype=np.float32)))
    bias = graph.node("Unsqueeze", bias, graph.constant("axes_1_2", np.array([1, 2], dtype=np.int64)))
    # onnxruntime wants a row of the mask per query position: [batch, 1, length, length]
    rows = graph.node("Concat", graph.node("Shape", "input_ids", end=1), graph.constant("one", np.array([1], dtype=np.int64)),
                      length, length, axis=0)
    bias = graph.node("Expand", bias, rows)
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        query, key, value = (linear(x, f"{p}.attention.self.{part}") for part in ("query", "key", "value"))
        context = graph.node("Attention", query, key, value, bias, q_num_heads=heads, kv_num_heads=heads)
        x = layer_norm(graph.node("Add", linear(context, f"{p}.attention.output.dense"), x), f"{p}.attention.output.LayerNorm")
        inner = graph.node("Gelu", linear(x, f"{p}.intermediate.dense"))
        x = layer_norm(graph.node("Add", linear(inner, f"{p}.output.dense"), x), f"{p}.output.LayerNorm")
    # mean over the real tokens, then unit length (the norm at least 1e-12, as torch's normalize)
    weights3 = graph.node("Unsqueeze", mask, graph.constant("axis_2", np.array([2], dtype=np.int64)))
    axis_1 = graph.constant("axis_1", np.array([1], dtype=np.int64))
    total = graph.node("ReduceSum", graph.node("Mul", x, weights3), axis_1, keepdims=0)
    count = graph.node("Max", graph.node("ReduceSum", weights3, axis_1, keepdims=0),
                       graph.constant("tiny_count", np.array(1e-9, dtype=np.float32)))
    pooled = graph.node("Div", total, count)
    norm = graph.node("Max", graph.node("ReduceL2", pooled, graph.constant("axis_last", np.array([-1], dtype=np.int64)),
                                        keepdims=1),
                      graph.constant("tiny_norm", np.array(1e-12, dtype=np.float32)))
    graph.node("Div", pooled, norm, output=OUTPUT_NAME)
    return graph.model("sentence_encoder", hidden)


class _Graph:
    """Nodes and initializers of a graph being written: each node's output gets a fresh name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(value), name)
        return name

    def node(self, op: str, *inputs: str, output: str | None = None, **attributes) -> str:
        output = output or f"{op.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, list(inputs), [output], **attributes))
        return output

    def model(self, name: str, hidden: int) -> onnx.ModelProto:
        inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "length"]) for n in INPUT_NAMES]
        outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", hidden])]
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=list(self.initializers.values()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ATTENTION_OPSET)])
        model.ir_version = GRAPH_IR_VERSION
        onnx.checker.check_model(model)
        return model


def write_layers(file: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write a student's transformer layers (float32 ``encoder.layer.{i}.*`` tensors, Hugging Face names) as a
    layers file: each matrix in int8 with a float32 scale per output channel (``<name>.scale``), symmetric
    as the int8 file quantises it, the vectors (biases, LayerNorm) in float32."""
    stored = {}
    for name, tensor in tensors.items():
        if not name.startswith(LAYER_PREFIX):
            raise ValueError(f"a layers file holds transformer layers only ({LAYER_PREFIX}*), not {name!r}")
        tensor = np.asarray(tensor, dtype=np.float32)
        if tensor.ndim == 2:  # [out, in]: a row per output channel
            scale = np.abs(tensor).max(axis=1) / 127
            stored[name] = np.clip(np.rint(tensor / np.where(scale > 0, scale, 1)[:, None]), -127, 127).astype(np.int8)
            stored[f"{name}.scale"] = scale.astype(np.float32)
        else:
            stored[name] = tensor
    write_atomically(file, lambda handle: handle.write(save(stored)), durable=False)


def read_layers(file: Path) -> dict[str, np.ndarray]:
    """A layers file's tensors in float32 (``write_layers``), by their Hugging Face names; an unreadable file
    is a bundle error."""
    try:
        stored = load_file(str(file))
    except (OSError, ValueError, TypeError, SafetensorError) as error:
        raise ModelBundleError(f"dense search: cannot read the layers file {file}: {error}") from None
    scales = {name.removesuffix(".scale") for name in stored if name.endswith(".scale")}
    return {name: tensor.astype(np.float32) * stored[f"{name}.scale"][:, None] if name in scales else tensor
            for name, tensor in stored.items() if not name.endswith(".scale")}


def layer_count(layers: dict[str, np.ndarray]) -> int:
    """How many transformer layers the tensors of a layers file (``read_layers``) hold."""
    return len({name.removeprefix(LAYER_PREFIX).split(".")[0] for name in layers})


def _with_layers(weight: Callable[[str], np.ndarray], layers: dict[str, np.ndarray]) -> Callable[[str], np.ndarray]:
    """``weight`` with every transformer layer's tensor read from ``layers`` instead."""

    def combined(name: str) -> np.ndarray:
        if not name.startswith(LAYER_PREFIX):
            return weight(name)
        if name not in layers:
            raise ModelBundleError(f"dense search: the layers file has no tensor {name!r}")
        return layers[name]

    return combined


def bert_config(encoder: Path) -> dict:
    """``config.json`` of a BERT encoder with absolute positions and exact GELU, the architecture ``bert_graph``
    writes; any other is refused with the reason."""
    try:
        config = json.loads((encoder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelBundleError(f"dense search: cannot read {encoder / 'config.json'}: {error}") from None
    found = (config.get("model_type"), config.get("hidden_act", "gelu"), config.get("position_embedding_type", "absolute"))
    if found != ("bert", "gelu", "absolute"):
        raise ModelBundleError(f"dense search: the encoder at {encoder} is model_type={found[0]!r}, hidden_act={found[1]!r}, "
                               f"position_embedding_type={found[2]!r}; the dense search runs BERT encoders (model_type "
                               "'bert', hidden_act 'gelu', absolute positions), such as all-MiniLM-L6-v2")
    return config


def _bert_weights(encoder: Path) -> Callable[[str], np.ndarray]:
    """The encoder's float32 tensor of a name, without a model-class prefix (``bert.``) and with older
    checkpoints' LayerNorm names (``gamma``, ``beta``) read as ``weight``, ``bias``; a missing one is a bundle error."""
    file = encoder / "model.safetensors"
    if not file.is_file():
        raise ModelBundleError(f"dense search: the encoder at {encoder} has no model.safetensors (the weights are read "
                               "without running code, so pickle checkpoints are not read)")
    try:
        tensors = load_file(str(file))
    except (OSError, ValueError, TypeError, SafetensorError) as error:  # unreadable, or a dtype numpy lacks (bfloat16)
        raise ModelBundleError(f"dense search: cannot read {file}: {error}") from None
    renamed = {".gamma": ".weight", ".beta": ".bias"}
    weights = {}
    for name, tensor in tensors.items():
        name = name.removeprefix("bert.")
        for old, new in renamed.items():
            name = name[: -len(old)] + new if name.endswith(old) else name
        weights[name] = tensor

    def weight(name: str) -> np.ndarray:
        if name not in weights:
            raise ModelBundleError(f"dense search: {file} has no tensor {name!r}: not a BERT encoder's weights")
        return np.asarray(weights[name], dtype=np.float32)

    return weight
