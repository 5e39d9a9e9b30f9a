from __future__ import annotations

import numpy as np
import pytest

from coder.model.folder import ONNX_FILES, load_tokenizer, read_card, read_config
from coder.model.chunking import chunk_notes, collate
from coder.errors import ExportParityError
from coder.export.onnx import FP32_TOLERANCE, OUTPUT_NAMES
from coder.export.parity import compare_outputs
from coder.model.session import create_session, onnx_forward
from coder.model.plm_icd import load_torch, torch_forward


def test_every_failing_output_is_listed_once():
    reference = {"logits": np.zeros((2, 3), np.float32), "attention_peak": np.zeros((2, 3), np.int64)}
    candidate = {"logits": np.full((2, 3), 0.5, np.float32), "attention_peak": np.ones((2, 3), np.int64)}
    with pytest.raises(ExportParityError, match=r"logits: max_abs_diff 0.5 .*; attention_peak: share_differing 1"):
        compare_outputs(reference, candidate, atol=1e-4)


def test_shape_mismatch_is_reported():
    with pytest.raises(ExportParityError, match=r"shape \(1, 3\), torch gives \(2, 3\)"):
        compare_outputs({"logits": np.zeros((2, 3))}, {"logits": np.zeros((1, 3))}, atol=1e-4)


def test_tiny_fp32_onnx_matches_torch(tiny_model_path):
    config = read_config(tiny_model_path)
    tokenizer = load_tokenizer(tiny_model_path)
    texts = ["fever and cough", "the patient was admitted to the hospital with pneumonia " * 3]
    notes = chunk_notes(texts, tokenizer=tokenizer, chunk_len=config.chunk_len, max_chunks=config.max_chunks)
    batch = collate(notes, indices=[0, 1], pad_id=tokenizer.pad_token_id)
    reference = dict(zip(OUTPUT_NAMES, torch_forward(load_torch(tiny_model_path, config))(batch), strict=True))
    session = create_session(tiny_model_path / ONNX_FILES["fp32"], device="cpu")
    checks = compare_outputs(reference, dict(zip(OUTPUT_NAMES, onnx_forward(session)(batch), strict=True)), atol=FP32_TOLERANCE)
    assert all(check.ok for check in checks)
    assert read_card(tiny_model_path).onnx["fp32"]["parity"]["logits"] <= FP32_TOLERANCE


def test_encoder_attention_is_exported_as_one_node_per_layer_and_stays_float_in_int8(tiny_model_path):
    import json

    import onnx

    layers = json.loads((tiny_model_path / "plm_icd" / "config.json").read_text())["num_hidden_layers"]
    ops = {variant: [node.op_type for node in onnx.load(str(tiny_model_path / ONNX_FILES[variant])).graph.node]
           for variant in ("fp32", "int8")}
    assert ops["fp32"].count("Attention") == layers
    assert ops["int8"].count("Attention") == layers and "QAttention" not in ops["int8"]
    assert "DynamicQuantizeMatMul" in ops["int8"] or "MatMulInteger" in ops["int8"]
