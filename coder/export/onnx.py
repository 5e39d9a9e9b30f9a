"""Export a model folder to ONNX: fp32 (verified against torch), int8 (kept if dev MAP holds), fp16 (GPU).

Inputs ``input_ids`` / ``attention_mask`` [batch, n_chunks, chunk_len] (batch and chunk axes
dynamic); outputs ``logits`` [batch, n_labels] and ``attention_peak`` [batch, n_labels], the
joined-token index where each label's attention peaks (evidence offsets).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import Fail as OrtFail
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented
from onnxruntime.quantization import QuantType, quantize_dynamic
from transformers import AttentionInterface, PreTrainedModel

from coder.export.parity import compare_outputs
from coder.io.corpus import Corpus
from coder.io.progress import quiet
from coder.metrics import gold_sets, matrix_scores
from coder.model.chunking import Batch, WordPieces, batches, chunk_notes, score_in_batches
from coder.model.folder import ONNX_FILES, ModelConfig, load_tokenizer, read_card, read_config
from coder.model.write import finalize
from coder.model.plm_icd import PlmIcd, load_torch, torch_forward
from coder.model.session import create_session, onnx_forward
from coder.ontology import canonical_codes, load_ontology
from coder.schema import NOTE_ID

logger = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("logits", "attention_peak")
OPSET = 23  # the first with the Attention operator
ATTENTION_OP = "coder_onnx_attention"
FP32_TOLERANCE = 1e-4
INT8_MAX_MAP_DROP = 0.01  # int8 is kept only if its dev MAP is within this of fp32, per system
# Text for the parity batch when no dev notes are given: three lengths, so the batch has padding chunks.
_SAMPLE = "Patient admitted with fever, productive cough and right lower lobe consolidation on chest radiograph. "


def export_onnx(model: PlmIcd, path: Path, *, example: Batch) -> None:
    """Write ``model`` as ONNX with dynamic batch and chunk axes (``example`` needs >= 2 of each)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    batch, chunks = torch.export.Dim("batch"), torch.export.Dim("chunks")
    axes = {0: batch, 1: chunks}
    # onnxscript's constant folding warns "Evaluation failed" for nodes it skips: harmless, so ERROR
    with warnings.catch_warnings(), quiet("onnx_ir", "onnxscript", level=logging.ERROR), _onnx_attention(model.encoder):
        warnings.simplefilter("ignore", UserWarning)  # axis-rename warnings and per-initializer logs
        program = _export(model, example, axes)
    program.save(str(path))


def _export(model: PlmIcd, example: Batch, axes: dict) -> Any:
    return torch.onnx.export(
        model.eval(),
        (torch.from_numpy(example.input_ids), torch.from_numpy(example.attention_mask)),
        dynamo=True,
        opset_version=OPSET,
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes={"input_ids": axes, "attention_mask": axes},
        external_data=False,
        verbose=False,
    )


def _attention_op(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Encoder self-attention as one ONNX ``Attention`` node (transformers attention interface).

    Decomposed, each layer's attention is a dozen nodes (scaled matmul, mask, softmax, matmul,
    transposes) that onnxruntime does not fuse for this graph; one node is faster on CPU and maps
    to fused kernels on GPU. onnxruntime wants the mask per query position.
    """
    mask = attention_mask.expand(-1, -1, query.shape[2], -1) if attention_mask is not None else None
    output, *_ = torch.onnx.ops.attention(query, key, value, attn_mask=mask, scale=scaling)
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_OP, _attention_op)


@contextlib.contextmanager
def _onnx_attention(encoder: PreTrainedModel) -> Iterator[None]:
    """Export the encoder's attention as ``Attention`` nodes when its architecture allows it
    (BERT, RoBERTa and the other encoders on transformers' attention interface)."""
    previous = encoder.config._attn_implementation
    if not getattr(encoder, "_supports_attention_backend", False):
        logger.info("%s exports its attention decomposed", type(encoder).__name__)
        yield
        return
    encoder.set_attn_implementation(ATTENTION_OP)
    try:
        yield
    finally:
        encoder.set_attn_implementation(previous)


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the weights (activations quantised at run time)."""
    with quiet(None):  # the quantiser logs every tensor on the root logger
        # Attention nodes stay float: the quantiser would turn them into QAttention nodes
        # without the num_heads attribute onnxruntime needs (Gather: the embedding table)
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm", "Gather"])


def convert_fp16(source: Path, target: Path) -> None:
    """fp16 weights and compute for GPU; inputs and outputs keep their types."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))


def _parity_batch(tokenizer: WordPieces, config: ModelConfig, texts: list[str] | None) -> Batch:
    texts = texts or [_SAMPLE * n for n in (1, 12, 30)]
    notes = chunk_notes(texts, tokenizer=tokenizer, chunk_len=config.chunk_len, max_chunks=config.max_chunks)
    return next(batches(notes, batch_size=len(texts), pad_id=tokenizer.pad_token_id))


def dev_maps(folder: Path, config: ModelConfig, forwards: dict[str, Any], *, dev: Corpus, batch_size: int) -> dict[str, dict[str, float]]:
    """Dev MAP per system for each forward function (name -> forward)."""
    column = config.text_columns["encoder"]
    notes = dev.notes
    ontology = load_ontology(codes_file=folder / config.code_list if config.code_list else None)
    gold = gold_sets(canonical_codes(dev.codes, ontology=ontology))
    tokenizer = load_tokenizer(folder)
    chunks = chunk_notes(notes[column].to_list(), tokenizer=tokenizer, chunk_len=config.chunk_len, max_chunks=config.max_chunks)
    maps = {}
    for name, forward in forwards.items():
        scores, _ = score_in_batches(forward, chunks, n_labels=len(config.labels), batch_size=batch_size, pad_id=tokenizer.pad_token_id)
        metrics = matrix_scores(scores, note_ids=notes[NOTE_ID].to_list(), gold=gold,
                                labels=[(label.system, label.code) for label in config.labels])
        maps[name] = {system: round(values.map, 4) for system, values in metrics.items()}
        logger.info("dev MAP %s: %s", name, maps[name])
    return maps


def export_bundle(
    folder: Path,
    *,
    dev: Corpus | None = None,
    tolerance: float = FP32_TOLERANCE,
    fp16: bool = True,
    batch_size: int = 8,
) -> ModelConfig:
    """Export fp32 (parity-checked), int8 (kept if dev MAP holds; needs dev data) and fp16 ONNX files."""
    config = read_config(folder)
    model = load_torch(folder, config)
    tokenizer = load_tokenizer(folder)
    column = config.text_columns["encoder"]
    texts = dev.notes[column].head(8).to_list() if dev is not None else None
    example = _parity_batch(tokenizer, config, texts)
    if example.input_ids.shape[0] < 2 or example.input_ids.shape[1] < 2:
        example = _parity_batch(tokenizer, config, None)  # dynamic axes need >= 2 notes and chunks to trace
    reference = dict(zip(OUTPUT_NAMES, torch_forward(model)(example), strict=True))

    fp32 = folder / ONNX_FILES["fp32"]
    export_onnx(model, fp32, example=example)
    fp32_session = create_session(fp32, device="cpu")
    checks = compare_outputs(reference, dict(zip(OUTPUT_NAMES, onnx_forward(fp32_session)(example), strict=True)), atol=tolerance, label="fp32 onnx")
    onnx_info: dict[str, Any] = {"fp32": {"file": ONNX_FILES["fp32"], "kept": True, "parity": {c.name: c.value for c in checks}, "tolerance": tolerance}}

    int8 = folder / ONNX_FILES["int8"]
    quantize_int8(fp32, int8)
    if dev is not None:
        forwards = {"fp32": onnx_forward(fp32_session), "int8": onnx_forward(create_session(int8, device="cpu"))}
        maps = dev_maps(folder, config, forwards, dev=dev, batch_size=batch_size)
        drop = {s: round(maps["fp32"][s] - maps["int8"].get(s, 0.0), 4) for s in maps["fp32"]}
        kept = all(d <= INT8_MAX_MAP_DROP for d in drop.values())
        onnx_info["fp32"]["dev_map"] = maps["fp32"]
        onnx_info["int8"] = {"file": ONNX_FILES["int8"], "kept": kept, "dev_map": maps["int8"], "map_drop": drop, "max_drop": INT8_MAX_MAP_DROP}
    else:
        kept = False
        onnx_info["int8"] = {"file": ONNX_FILES["int8"], "kept": False, "reason": "not verified: export with --dev-notes and --dev-codes"}
    if not kept:
        int8.unlink()
        logger.warning("int8 model not kept: %s", onnx_info["int8"])

    if fp16:
        onnx_info["fp16"] = _export_fp16(folder, fp32, reference, example)
    variants = tuple(variant for variant, info in onnx_info.items() if info["kept"])
    return finalize(folder, config.with_components(onnx_kept=variants), dataclasses.replace(read_card(folder), onnx=onnx_info))


def _export_fp16(folder: Path, fp32: Path, reference: dict[str, np.ndarray], example: Batch) -> dict[str, Any]:
    """fp16 for CUDA; its difference from torch is measured (on CPU if no GPU) and recorded, not enforced."""
    target = folder / ONNX_FILES["fp16"]
    convert_fp16(fp32, target)
    info: dict[str, Any] = {"file": ONNX_FILES["fp16"], "kept": True}
    try:
        outputs = onnx_forward(create_session(target))(example)
        diff = float(np.max(np.abs(outputs[0] - reference["logits"])))
        info["logits_max_abs_diff"] = round(diff, 5)
    except (RuntimeError, OrtFail, OrtNotImplemented) as error:  # the variant stays, unmeasured
        info["logits_max_abs_diff"] = None
        logger.warning("fp16 model could not be run here (%s); kept for GPU, unverified", type(error).__name__)
    return info
