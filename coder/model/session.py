"""onnxruntime sessions for exported PLM-ICD models: TensorRT, then CUDA, then CPU.

onnxruntime-gpu lists the GPU providers even on a machine without a GPU and falls back to CPU
with an error log when asked for them; so GPU providers are only requested when the NVIDIA
driver library loads, and the provider actually used is read back from the session.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from coder.cpus import compute_threads
from coder.model.chunking import Batch
from coder.errors import UsageError

logger = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CPU_PROVIDER = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")
CPU_DISABLED_FUSIONS = ("SkipLayerNormFusion",)
# Graphs this package builds in code (reranker trees, the dense search's products): IR 10 loads in
# onnxruntime 1.2x-1.3x, newer onnx packages write a newer IR by default.
GRAPH_OPSET, GRAPH_IR_VERSION = 21, 10


@cache
def gpu_present() -> bool:
    """True when an NVIDIA driver is installed (libcuda loads)."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def providers_for(device: str) -> list[str]:
    """Providers to ask for, best first, for ``device`` in auto/cpu/cuda."""
    if device not in DEVICES:
        raise UsageError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu" or not gpu_present():
        if device == "cuda":
            raise UsageError("device 'cuda' was asked for but no NVIDIA driver (libcuda.so.1) is present; use --device cpu")
        return [CPU_PROVIDER]
    available = ort.get_available_providers()
    return [p for p in GPU_PROVIDERS if p in available] + [CPU_PROVIDER]


def create_session(model: Path | bytes, *, device: str = "auto", providers: Sequence[str] | None = None,
                   arena: bool = True) -> ort.InferenceSession:
    """An inference session of an ONNX file (or of a serialised graph) on the best provider for
    ``device`` (or on ``providers``, tried in order); logs the provider used. ``arena=False``: CPU
    memory goes back after each run instead of staying with the session at the size of its largest run."""
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = arena
    options.intra_op_num_threads = compute_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = list(providers) if providers else providers_for(device)
    # CPU only: the fused SkipLayerNormalization kernel is slower there than the LayerNormalization +
    # Add it replaces (benchmarks/onnx_profile.py times both); GPUs keep the fusion.
    disabled = list(CPU_DISABLED_FUSIONS) if providers == [CPU_PROVIDER] else []
    session = ort.InferenceSession(str(model) if isinstance(model, Path) else model, sess_options=options,
                                   providers=providers, disabled_optimizers=disabled)
    name = model.name if isinstance(model, Path) else "graph"
    logger.info("onnxruntime %s on %s (%d intra-op threads)", name, session.get_providers()[0], options.intra_op_num_threads)
    return session


def onnx_forward(session: ort.InferenceSession, *, io_binding: bool | None = None) -> Callable[[Batch], tuple[np.ndarray, np.ndarray]]:
    """Batch -> (logits [batch, n_labels] float32, attention peaks [batch, n_labels] int64).

    ``io_binding`` (default: on for GPU providers): inputs are copied to the device once and the
    outputs are allocated there by onnxruntime, then copied back in one step per batch.
    """
    if io_binding is None:
        io_binding = session.get_providers()[0] in GPU_PROVIDERS
    if io_binding:
        return _bound_forward(session)

    def forward(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        logits, peaks = session.run(None, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
        return logits.astype(np.float32), peaks

    return forward


def _bound_forward(session: ort.InferenceSession) -> Callable[[Batch], tuple[np.ndarray, np.ndarray]]:
    device = "cuda" if session.get_providers()[0] in GPU_PROVIDERS else "cpu"
    outputs = [output.name for output in session.get_outputs()]

    def forward(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        binding = session.io_binding()
        for name, array in (("input_ids", batch.input_ids), ("attention_mask", batch.attention_mask)):
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, 0)
            binding.bind_ortvalue_input(name, value)
        for name in outputs:
            binding.bind_output(name, device)
        session.run_with_iobinding(binding)
        logits, peaks = binding.copy_outputs_to_cpu()
        return logits.astype(np.float32), peaks

    return forward


def output_width(session: ort.InferenceSession) -> int | str:
    """Width of the logits output (an int, or a symbol if the export left it dynamic)."""
    return session.get_outputs()[0].shape[-1]
