"""Export a sentence encoder (mean-pooled, unit-length vectors) to int8 ONNX for the dense search.

``exported_sentence_encoder`` gives the folder the dense search runs (``coder.candidates.dense_search``):
``model.int8.onnx``, ``tokenizer.json`` (the tokenizer as the encoder's Hugging Face config sets it up)
and ``encoder.json`` (its padding id, and where it came from), made on first use once per encoder and
library versions, in the cache folder.

Input ``input_ids`` / ``attention_mask`` [batch, length] (both axes dynamic); output
``sentence_vector`` [batch, hidden]. Attention stays decomposed: the single ``Attention`` node
that PLM-ICD's export uses let padded positions in for this graph (padded rows far from torch),
where decomposed fp32 matches torch within ``TOLERANCE``. MatMul weights are quantised per output
channel (per tensor, the int8 vectors were clearly further from fp32), and the token embeddings
too, as PLM-ICD's int8 file does.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from coder.errors import ExportParityError
from coder.export.onnx import OPSET, quiet
from coder.export.parity import compare_outputs
from coder.io.atomic import write_json, write_text
from coder.io.progress import announce
from coder.model.folder import encoder_record
from coder.model.session import create_session
from coder.ontology.cache import CACHE_DIR_ENV, cache_dir, cache_key

logger = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "sentence_vector"  # not "embedding": the exported graph has a node of that name
TOLERANCE = 1e-4  # fp32 ONNX against torch, per vector component
INT8_MIN_COSINE = 0.98  # the int8 file's vectors against torch's on the parity sentences
ENCODER_FILE, TOKENIZER_FILE, SETTINGS_FILE = "model.int8.onnx", "tokenizer.json", "encoder.json"
EXPORT_S = 30  # what the export announces it takes (all-MiniLM-L6-v2 on a server core)
_PARITY = ["Fever and productive cough.", "Type 2 diabetes mellitus with hyperglycemia, treated with insulin glargine",
           "CT"]


class MeanPooled(torch.nn.Module):
    """The encoder's last hidden states averaged over the real tokens, scaled to unit length
    (sentence-transformers' recipe for all-MiniLM-L6-v2)."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


def exported_sentence_encoder(encoder: Path, *, name: str, sha256: str) -> Path:
    """The dense search's folder of ``encoder`` (a local Hugging Face folder named ``name``, its files'
    ``sha256``): from the cache folder, else exported (announced) and checked (``export_sentence_encoder``)
    into a staging folder there, then renamed into place, so a run sees a whole folder or none. An unwritable
    cache folder costs a warning: the export goes to a temporary folder, removed when the process ends."""
    versions = {"torch": version("torch"), "transformers": version("transformers"), "onnxruntime": onnxruntime.__version__}
    key = cache_key(sources=[], salt=json.dumps({"encoder": sha256, **versions}))
    folder = cache_dir() / f"sentence-{sha256[:12]}-{key[:12]}"
    if all((folder / file).is_file() for file in (ENCODER_FILE, TOKENIZER_FILE, SETTINGS_FILE)):
        return folder
    announce("the dense search's sentence encoder as int8 ONNX", seconds=EXPORT_S)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging, cached = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-")), True
    except OSError as error:
        logger.warning("cannot write the sentence encoder into %s (%s): it is exported again on every run until %s "
                       "names a writable folder", folder.parent, error, CACHE_DIR_ENV)
        staging, cached = Path(tempfile.mkdtemp(prefix="coder-sentence-")), False
        atexit.register(shutil.rmtree, staging, True)
    export_sentence_encoder(encoder, staging / ENCODER_FILE)
    tokenizer = AutoTokenizer.from_pretrained(str(encoder))
    write_text(staging / TOKENIZER_FILE, tokenizer.backend_tokenizer.to_str(), durable=False)
    settings = {"pad_token_id": tokenizer.pad_token_id or 0, "exported_from": encoder_record(encoder, name=name),
                "versions": versions}
    write_json(staging / SETTINGS_FILE, settings, durable=False)
    if not cached:
        return staging
    shutil.rmtree(folder, ignore_errors=True)  # what an interrupted run of an older coder left
    try:
        staging.rename(folder)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another run finished first
    return folder


def export_sentence_encoder(encoder: Path, target: Path) -> None:
    """Write ``encoder`` (a local Hugging Face folder) as int8 ONNX to ``target``, after checking
    the fp32 export against torch and the int8 file against both (``ExportParityError``)."""
    tokenizer = AutoTokenizer.from_pretrained(str(encoder))
    with _no_loading_bar():
        model = MeanPooled(AutoModel.from_pretrained(str(encoder))).eval()
    example = tokenizer(_PARITY, padding=True, return_tensors="pt")  # padded rows: the mask is exercised
    inputs = (example["input_ids"], example["attention_mask"])
    with torch.inference_mode():
        reference = model(*inputs).numpy()
    axes = {0: torch.export.Dim("batch"), 1: torch.export.Dim("length")}
    with tempfile.TemporaryDirectory() as folder:
        fp32 = Path(folder) / "sentence.onnx"
        # onnxscript's constant folding warns "Evaluation failed" for nodes it skips, torch.onnx that
        # torchvision's operators are not registered: harmless
        with warnings.catch_warnings(), quiet("onnx_ir", "onnxscript", "torch.onnx", level=logging.ERROR):
            warnings.simplefilter("ignore", UserWarning)
            program = torch.onnx.export(model, inputs, dynamo=True, opset_version=OPSET, input_names=list(INPUT_NAMES),
                                        output_names=[OUTPUT_NAME], dynamic_shapes={name: axes for name in INPUT_NAMES},
                                        external_data=False, verbose=False)
        program.save(str(fp32))
        feed = {name: tensor.numpy() for name, tensor in zip(INPUT_NAMES, inputs, strict=True)}
        found = create_session(fp32, device="cpu").run(None, feed)[0]
        compare_outputs({OUTPUT_NAME: reference}, {OUTPUT_NAME: found}, atol=TOLERANCE, label="sentence encoder fp32 onnx")
        # the quantiser logs every tensor, and advice to pre-process the graph, on the root logger
        with quiet(None, level=logging.ERROR):
            quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul", "Gather"])
    int8 = create_session(target, device="cpu").run(None, feed)[0]
    cosine = float(np.min((int8 * reference).sum(axis=1)))
    if cosine < INT8_MIN_COSINE:
        target.unlink()
        raise ExportParityError(f"int8 sentence encoder of {encoder}: cosine to torch {cosine:.3f} < {INT8_MIN_COSINE}")
    logger.info("sentence encoder %s exported to int8 ONNX (cosine to torch >= %.4f)", encoder, cosine)


@contextlib.contextmanager
def _no_loading_bar() -> Iterator[None]:
    """transformers' "Loading weights" bar off while the encoder loads: the preparation that exports
    it has its own announcement."""
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()
