from __future__ import annotations

import pytest

from coder.model import session as onnx_runtime
from coder.errors import UsageError


def test_cpu_only_machine_asks_for_cpu(monkeypatch):
    monkeypatch.setattr(onnx_runtime, "gpu_present", lambda: False)
    assert onnx_runtime.providers_for("auto") == ["CPUExecutionProvider"]
    with pytest.raises(UsageError, match="no NVIDIA driver"):
        onnx_runtime.providers_for("cuda")


def test_gpu_machine_tries_tensorrt_then_cuda_then_cpu(monkeypatch):
    monkeypatch.setattr(onnx_runtime, "gpu_present", lambda: True)
    monkeypatch.setattr(onnx_runtime.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"])
    assert onnx_runtime.providers_for("auto") == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_runtime.providers_for("cpu") == ["CPUExecutionProvider"]


def test_unknown_device_is_a_usage_error():
    with pytest.raises(UsageError, match="device must be one of"):
        onnx_runtime.providers_for("tpu")


def test_session_reports_the_provider_used(tiny_model_path):
    session = onnx_runtime.create_session(tiny_model_path / "onnx" / "model.onnx", device="cpu")
    assert session.get_providers()[0] == "CPUExecutionProvider"
    assert onnx_runtime.output_width(session) == 7


def test_a_session_without_arena_gives_memory_back(tiny_model_path):
    path = tiny_model_path / "onnx" / "model.onnx"
    assert onnx_runtime.create_session(path, device="cpu").get_session_options().enable_cpu_mem_arena
    assert not onnx_runtime.create_session(path, device="cpu", arena=False).get_session_options().enable_cpu_mem_arena


def test_sessions_keep_to_omp_num_threads(tiny_model_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Ray sets in an actor of one CPU
    session = onnx_runtime.create_session(tiny_model_path / "onnx" / "model.onnx", device="cpu")
    assert session.get_session_options().intra_op_num_threads == 1


def test_io_bound_forward_gives_the_same_outputs(tiny_model_path):
    import numpy as np

    from coder.model.folder import load_tokenizer, read_config
    from coder.model.chunking import chunk_notes, collate

    config, tokenizer = read_config(tiny_model_path), load_tokenizer(tiny_model_path)
    notes = chunk_notes(["fever and cough " * 40, "a short note"], tokenizer=tokenizer, chunk_len=config.chunk_len,
                        max_chunks=config.max_chunks)
    batch = collate(notes, indices=[0, 1], pad_id=tokenizer.pad_token_id)
    session = onnx_runtime.create_session(tiny_model_path / "onnx" / "model.onnx", device="cpu")
    plain = onnx_runtime.onnx_forward(session)(batch)
    bound = onnx_runtime.onnx_forward(session, io_binding=True)(batch)
    np.testing.assert_array_equal(plain[0], bound[0])
    np.testing.assert_array_equal(plain[1], bound[1])
