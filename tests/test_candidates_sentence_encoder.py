"""The dense search's sentence encoder built without torch: its fp32 graph against Hugging Face's BertModel
(the packaged all-MiniLM-L6-v2 and the tiny test encoder), the tokenizer it ships against the Hugging Face
tokenizer's ids, the int8 file's check, and the encoders it refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import AutoModel, AutoTokenizer

from coder.candidates.sentence_encoder import LAYER_PREFIX, bert_graph, read_layers, sentence_encoder, write_layers
from coder.errors import ModelBundleError
from coder.hashing import folder_sha256
from coder.model.chunking import WordPieces
from coder.model.folder import default_encoder_path
from coder.model.session import create_session

TEXTS = ["Fever and productive cough.", "CT",
         "A 45-year-old man with type 2 diabetes mellitus and chronic kidney disease stage 3 was admitted.",
         "Resección de apéndice; ácido acetilsalicílico 100 mg/día."]


def _torch_vectors(folder, texts):
    """Hugging Face's BertModel, mean pooled over the real tokens and scaled to unit length."""
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        vectors = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    return batch, vectors.numpy()


@pytest.mark.parametrize("which", ["packaged", "tiny"])
def test_the_fp32_graph_matches_hugging_face_bert_on_padded_rows(which, tiny_model_path):
    folder = default_encoder_path() if which == "packaged" else tiny_model_path.parent / "encoder"
    batch, expected = _torch_vectors(folder, TEXTS)
    session = create_session(bert_graph(folder).SerializeToString(), device="cpu")
    found = session.run(None, {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()})[0]
    np.testing.assert_allclose(found, expected, atol=1e-4)


def test_the_shipped_tokenizer_gives_hugging_faces_ids():
    folder = default_encoder_path()
    ours = WordPieces.read(folder).backend
    ours.no_padding()
    ours.enable_truncation(128)
    expected = AutoTokenizer.from_pretrained(str(folder))(TEXTS * 3, truncation=True, max_length=128)["input_ids"]
    assert [row.ids for row in ours.encode_batch_fast(TEXTS * 3)] == expected


def test_the_int8_file_is_close_to_torch_and_built_once(tmp_path, monkeypatch):
    monkeypatch.setenv("CODER_CACHE_DIR", str(tmp_path / "cache"))
    folder = default_encoder_path()
    sha256 = folder_sha256(folder)
    built = sentence_encoder(folder, sha256=sha256)
    [cached] = (tmp_path / "cache").iterdir()
    assert cached.read_bytes() == built.model
    assert WordPieces.read(folder).pad_token_id == 0
    batch, expected = _torch_vectors(folder, TEXTS)
    session = create_session(built.model, device="cpu")
    found = session.run(None, {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()})[0]
    assert (found * expected).sum(axis=1).min() > 0.95
    stamp = cached.stat().st_mtime_ns
    assert sentence_encoder(folder, sha256=sha256) == built
    assert cached.stat().st_mtime_ns == stamp  # from the cache
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no partial file left


def test_an_encoder_other_than_bert_or_without_safetensors_is_refused(encoder_copy):
    folder = encoder_copy
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    with pytest.raises(ModelBundleError, match="model_type='roberta'.*runs BERT encoders"):
        bert_graph(folder)
    (folder / "config.json").write_text(json.dumps(config))
    weights = load_file(str(folder / "model.safetensors"))
    save_file({name: tensor for name, tensor in weights.items() if "layer.1.output.dense.bias" not in name},
              str(folder / "model.safetensors"))
    with pytest.raises(ModelBundleError, match="no tensor 'encoder.layer.1.output.dense.bias'"):
        bert_graph(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelBundleError, match="no model.safetensors"):
        bert_graph(folder)


def test_older_layer_norm_names_are_read(encoder_copy, tiny_model_path):
    """Checkpoints of the original BERT name LayerNorm's tensors gamma and beta, as Hugging Face still loads them."""
    folder = encoder_copy
    weights = load_file(str(folder / "model.safetensors"))
    renamed = {name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): tensor
               for name, tensor in weights.items()}
    save_file(renamed, str(folder / "model.safetensors"))
    assert bert_graph(folder).SerializeToString() == bert_graph(tiny_model_path.parent / "encoder").SerializeToString()


def test_a_layers_file_replaces_the_encoders_layers_in_int8_within_half_a_step(tmp_path, tiny_model_path, monkeypatch):
    """A student's layers over the encoder's embeddings: each matrix kept in int8 per output channel (within half
    a step of float32), the graph equal to Hugging Face's BertModel with those layers, cached apart from the encoder."""
    monkeypatch.setenv("CODER_CACHE_DIR", str(tmp_path / "cache"))
    folder = tiny_model_path.parent / "encoder"
    model = AutoModel.from_pretrained(str(folder)).eval()
    model.encoder.layer = torch.nn.ModuleList([model.encoder.layer[1]])
    model.config.num_hidden_layers = 1
    tensors = {name: tensor.numpy() for name, tensor in model.state_dict().items() if name.startswith(LAYER_PREFIX)}
    file = tmp_path / "layers.safetensors"
    write_layers(file, tensors)
    stored = read_layers(file)
    assert stored.keys() == tensors.keys()
    for name, tensor in tensors.items():
        step = np.abs(tensor).max(axis=-1, keepdims=True) / 127 if tensor.ndim == 2 else 0
        assert np.all(np.abs(stored[name] - tensor) <= step / 2 + 1e-7), name
    model.load_state_dict({**model.state_dict(), **{name: torch.from_numpy(t) for name, t in stored.items()}})
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    feed = {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()}
    found = create_session(bert_graph(folder, layers=file).SerializeToString(), device="cpu").run(None, feed)[0]
    np.testing.assert_allclose(found, expected, atol=1e-4)
    sha256 = folder_sha256(folder)
    assert sentence_encoder(folder, sha256=sha256, layers=file).key != sentence_encoder(folder, sha256=sha256).key
    assert len(list((tmp_path / "cache").iterdir())) == 2  # neither build replaced the other's file
    with pytest.raises(ValueError, match="transformer layers only"):
        write_layers(tmp_path / "bad.safetensors", {"embeddings.word_embeddings.weight": np.zeros((2, 2))})
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelBundleError, match="cannot read the layers file"):
        bert_graph(folder, layers=tmp_path / "broken.safetensors")
