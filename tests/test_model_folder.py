from __future__ import annotations

import json
import shutil

import pytest

from coder.model.folder import CARD_FILE, CARD_KEEP, CONFIG_FILE, MODEL_ENV, ModelConfig, default_model_path, read_config, write_card
from coder.errors import ModelBundleError
from coder.model.scorer import load_predictor


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


def test_config_round_trips(tiny_model_path):
    config = read_config(tiny_model_path)
    assert ModelConfig.from_dict(json.loads(config.to_json())) == config
    assert len(config.thresholds) == len(config.labels)


def _drop_last_label(data):
    data["labels"].pop()
    data["thresholds"].pop()


def _wrong_onnx_hash(data):
    data["files"]["onnx/model.onnx"] = "0" * 64


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(surprise=1), r"unknown keys \['surprise'\]"),
        (lambda d: d.pop("labels"), r"missing keys \['labels'\]"),
        (lambda d: d.update(format_version=99), "format_version 99"),
        (_drop_last_label, r"outputs 7 logits, coder_model.json lists 6 labels"),
        (_wrong_onnx_hash, r"model.onnx has sha256 .* expects 000000000000"),
    ],
    ids=["unknown-key", "missing-key", "format-version", "label-count-vs-onnx-width", "hash-mismatch"],
)
def test_loader_says_what_does_not_match(bundle_copy, edit, message):
    _edit_config(bundle_copy, edit)
    with pytest.raises(ModelBundleError, match=message):
        load_predictor(bundle_copy, device="cpu", precision="fp32")


def test_missing_onnx_file_names_the_fix(bundle_copy):
    (bundle_copy / "onnx" / "model.onnx").unlink()
    with pytest.raises(ModelBundleError, match="coder export"):
        load_predictor(bundle_copy, device="cpu", precision="fp32")


def test_default_model_path_follows_the_environment(monkeypatch, tiny_model_path, tmp_path):
    monkeypatch.setenv(MODEL_ENV, str(tiny_model_path))
    assert default_model_path() == tiny_model_path
    monkeypatch.setenv(MODEL_ENV, str(tmp_path))
    with pytest.raises(ModelBundleError, match=rf"no model at {tmp_path} \(\$CODER_MODEL\)"):
        default_model_path()


def test_card_rewrite_keeps_the_section_after_the_marker(bundle_copy):
    card = bundle_copy / CARD_FILE
    card.write_text(card.read_text() + f"\n{CARD_KEEP}\n## Stack\n\nwritten by hand\n")
    write_card(bundle_copy, read_config(bundle_copy))
    write_card(bundle_copy, read_config(bundle_copy))  # twice: the section is kept once, not doubled
    text = card.read_text()
    assert text.startswith("# ") and text.count(CARD_KEEP) == 1
    assert text.endswith(f"{CARD_KEEP}\n## Stack\n\nwritten by hand\n")
