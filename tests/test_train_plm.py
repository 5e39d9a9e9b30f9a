from __future__ import annotations

import pytest

from coder.errors import UsageError
from coder.io.corpus import Corpus
from coder.train import plm as trainer
from coder.model.folder import read_card
from coder.train.plm import TrainingOptions, checkpoint_folder, train

OPTIONS = TrainingOptions(epochs=2, batch_size=4, accumulation=1, chunk_len=16, max_chunks=2, attention_dim=8, patience=5)


@pytest.fixture
def inputs(tiny_model_path, tmp_path):
    data = tiny_model_path.parent / "data"
    corpus = Corpus.read(data / "notes.parquet", data / "codes.parquet", text_columns=["text"])
    corpus = corpus.subset(corpus.notes["note_id"].head(8))
    return {"train": corpus, "dev": corpus, "encoder_path": tiny_model_path.parent / "encoder", "encoder_name": "tiny",
            "options": OPTIONS}


def test_an_interrupted_run_resumes_to_the_same_result(inputs, tmp_path, monkeypatch):
    full = train(out=tmp_path / "full", **inputs)
    uninterrupted = trainer._train_epoch

    def interrupted(*args, epoch, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return uninterrupted(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(trainer, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(out=tmp_path / "resumed", **inputs)
    checkpoint = checkpoint_folder(tmp_path / "resumed")
    assert sorted(p.name for p in checkpoint.iterdir()) == ["state.json", "tensors.safetensors"]  # no pickle
    assert not any(p.suffix == ".pt" for p in (tmp_path / "resumed").rglob("*"))
    monkeypatch.setattr(trainer, "_train_epoch", uninterrupted)
    resumed = train(out=tmp_path / "resumed", resume=True, **inputs)
    assert read_card(tmp_path / "resumed").training["history"] == read_card(tmp_path / "full").training["history"]
    assert resumed.files["plm_icd/model.safetensors"] == full.files["plm_icd/model.safetensors"]
    assert not checkpoint.exists()


def test_resume_without_a_checkpoint_is_refused(inputs, tmp_path):
    with pytest.raises(UsageError, match="no checkpoint at"):
        train(out=tmp_path / "nothing", resume=True, **inputs)


def test_label_attention_starts_from_the_code_descriptions(inputs):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from coder.model.plm_icd import PlmIcd
    from coder.ontology import load_ontology
    from coder.train.data import Label, LabelSet

    encoder = inputs["encoder_path"]
    model = PlmIcd(encoder=AutoModel.from_pretrained(str(encoder)), n_labels=3, attention_dim=8)
    norm = model.head.label_weights.norm(dim=1).mean()
    # I10 and I10 again (one description, one start), then appendicitis
    labels = LabelSet(labels=(Label("ICD-10-CM", "I10"), Label("ICD-10-CM", "I10"), Label("ICD-10-CM", "K35.80")), unknown=())
    trainer._describe_labels(model, labels, tokenizer=AutoTokenizer.from_pretrained(str(encoder)), ontology=load_ontology())
    weights, queries = model.head.label_weights, model.head.label_queries.weight
    assert torch.allclose(weights.norm(dim=1), norm.expand(3), rtol=1e-4)  # the random start's scale, kept
    assert torch.equal(weights[0], weights[1]) and torch.equal(queries[0], queries[1])
    assert not torch.allclose(weights[0], weights[2])
    assert model.training
