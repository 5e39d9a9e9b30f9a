"""The dense search's sentence layers distilled by ``coder train``: the sentences they learn from, the layers
file they make (reproducible for a seed), which sources get them, and an encoder refused before training."""

from __future__ import annotations

import json

import polars as pl
import pytest

from coder.candidates import DenseSearch, OntologySearch
from coder.candidates.sentence_encoder import read_layers
from coder.errors import ModelBundleError
from coder.train.distil import note_sentences, with_sentence_layers

TEXTS = ["Patient with arterial hypertension. Type 2 diabetes mellitus.\nLaparoscopic appendectomy was done.",
         "Woman with asthma. Denies arterial hypertension.", "Fever and productive cough; chest CT. Discharged home."] * 4


def test_the_sentences_are_the_dense_searchs_and_a_seeded_sample_of_them():
    every = note_sentences(TEXTS, limit=1_000, seed=0)
    assert [sentence.strip() for sentence in every[:3]] == ["Patient with arterial hypertension", "Type 2 diabetes mellitus", "Laparoscopic appendectomy was done"]
    sample = note_sentences(TEXTS, limit=5, seed=0)
    assert len(sample) == 5 and sample == note_sentences(TEXTS, limit=5, seed=0) and set(sample) <= set(every)


def test_dense_searches_get_a_student_with_fewer_layers_the_same_for_a_seed(tmp_path, tiny_model_path):
    encoder = str(tiny_model_path.parent / "encoder")  # 2 layers
    sources = [OntologySearch(name="ontology"), DenseSearch(name="dense", encoder=encoder)]
    texts = pl.DataFrame({"text": TEXTS + [None]})
    found = with_sentence_layers(sources, layers=1, texts=texts, folder=tmp_path / "a", seed=3)
    assert found[0] is sources[0] and sources[1].sentence_layers is None
    assert found[1].get_params() == {**sources[1].get_params(), "sentence_layers": str(tmp_path / "a" / "dense.safetensors")}
    layers = read_layers(tmp_path / "a" / "dense.safetensors")
    assert {name.split(".")[2] for name in layers} == {"0"}
    again = with_sentence_layers(sources, layers=1, texts=texts, folder=tmp_path / "b", seed=3)
    assert (tmp_path / "b" / "dense.safetensors").read_bytes() == (tmp_path / "a" / "dense.safetensors").read_bytes()
    for layers_count in (0, 2, 3):  # none asked, or not fewer than the encoder's own: the encoder encodes the sentences
        assert with_sentence_layers(sources, layers=layers_count, texts=texts, folder=tmp_path / "c", seed=3) == sources
    assert not (tmp_path / "c").exists() and again[1].sentence_layers.endswith("dense.safetensors")


def test_an_encoder_the_dense_search_cannot_run_fails_before_any_training(tmp_path, encoder_copy):
    folder = encoder_copy
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    with pytest.raises(ModelBundleError, match="runs BERT encoders"):
        with_sentence_layers([DenseSearch(encoder=str(folder))], layers=1, texts=pl.DataFrame({"text": TEXTS}),
                             folder=tmp_path / "layers", seed=0)
    assert not (tmp_path / "layers").exists()
