"""The model folder: a config that lists every file, a hash that covers them, no pickle, a generated card."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest

from coder.errors import ModelBundleError
from coder.model.card import render_card
from coder.model.folder import (
    CARD_FILE, CONFIG_FILE, MODEL_ENV, ModelConfig, component_hashes, default_model_path, model_hash, read_config,
)
from coder.model.write import finalize
from coder.model.load import load_model


@pytest.fixture
def bundle_copy(tiny_model_path, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_model_path, target)
    return target


def _edit_config(folder, edit) -> None:
    path = folder / CONFIG_FILE
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_config_round_trips_and_lists_every_file(tiny_model_path):
    config = read_config(tiny_model_path)
    assert ModelConfig.from_dict(json.loads(config.to_json())) == config
    assert len(config.thresholds) == len(config.labels)
    on_disk = sorted(p.relative_to(tiny_model_path).as_posix() for p in tiny_model_path.rglob("*") if p.is_file())
    assert sorted([*config.files, CONFIG_FILE]) == on_disk


def _drop_last_label(data):
    data["labels"].pop()
    data["thresholds"].pop()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(surprise=1), r"unknown keys \['surprise'\]"),
        (lambda d: d.pop("labels"), r"missing keys \['labels'\]"),
        (lambda d: d.update(format_version=1), "format_version 1, this coder reads 2"),
        (lambda d: d.update(sources=[{"name": "x", "kind": "lexicon"}]), r"sources: unknown keys \[\] and missing keys \['text_column'\]"),
        (_drop_last_label, r"outputs 7 logits, the config lists 6 labels"),
    ],
    ids=["unknown-key", "missing-key", "format-version", "bad-source-entry", "label-count-vs-onnx-width"],
)
def test_loader_says_what_does_not_match(bundle_copy, edit, message):
    _edit_config(bundle_copy, edit)
    with pytest.raises(ModelBundleError, match=message):
        load_model(bundle_copy, device="cpu", precision="fp32")


@pytest.mark.parametrize("name", ["onnx/model.onnx", "plm_icd/tokenizer.json", "plm_icd/model.safetensors", "README.md"])
def test_a_changed_file_is_refused_and_named(bundle_copy, name):
    with (bundle_copy / name).open("ab") as handle:
        handle.write(b" ")
    with pytest.raises(ModelBundleError, match=rf"{name} \(.*\) has sha256 .* the file was changed"):
        load_model(bundle_copy, device="cpu", precision="fp32")


def test_every_file_changes_the_model_hash(bundle_copy):
    """Rebuilding the config after any file changes gives another model hash and names the component."""
    before_hash, before = model_hash(bundle_copy), component_hashes(read_config(bundle_copy))
    with (bundle_copy / "plm_icd" / "tokenizer_config.json").open("a") as handle:
        handle.write(" ")
    config = finalize(bundle_copy, read_config(bundle_copy))
    after = component_hashes(config)
    assert model_hash(bundle_copy) != before_hash
    assert [name for name in after if after[name] != before.get(name)] == ["plm_icd"]


@pytest.mark.parametrize("name", ["rerankers/x/icd_10_cm.joblib", "sources/extra/state.bin", "plm_icd/weights.json"],
                         ids=["joblib", "bin", "pickle-inside-json"])
def test_a_pickle_in_the_folder_is_refused(bundle_copy, name):
    path = bundle_copy / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"weights": [1, 2]}))
    finalize(bundle_copy, read_config(bundle_copy))  # even when the config lists it
    with pytest.raises(ModelBundleError, match=r"holds pickle files .* could run code"):
        load_model(bundle_copy, device="cpu")


def test_an_unlisted_file_is_refused(bundle_copy):
    (bundle_copy / "onnx" / "extra.onnx").write_bytes(b"\x08\x01")
    with pytest.raises(ModelBundleError, match=r"holds files its coder_model.json does not list \(onnx/extra.onnx\)"):
        load_model(bundle_copy, device="cpu")


def test_missing_onnx_file_names_the_fix(bundle_copy):
    (bundle_copy / "onnx" / "model.onnx").unlink()
    with pytest.raises(ModelBundleError, match="coder export"):
        load_model(bundle_copy, device="cpu", precision="fp32")


def test_default_model_path_follows_the_environment(monkeypatch, tiny_model_path, tmp_path):
    monkeypatch.setenv(MODEL_ENV, str(tiny_model_path))
    assert default_model_path() == tiny_model_path
    monkeypatch.setenv(MODEL_ENV, str(tmp_path))
    with pytest.raises(ModelBundleError, match=rf"no model at {tmp_path} \(\$CODER_MODEL\)"):
        default_model_path()


def test_the_card_is_generated_from_the_config_alone(tiny_model_path):
    config = read_config(tiny_model_path)
    assert (tiny_model_path / CARD_FILE).read_text() == render_card(config)
    assert "No reranker: PLM-ICD's scores rank the codes" in render_card(config)
