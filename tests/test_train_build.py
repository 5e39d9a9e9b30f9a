"""`coder train`: the whole model (PLM-ICD, ONNX, candidate sources, rerankers, dev figures, card) in one folder."""

from __future__ import annotations

import polars as pl
import pytest
from typer.testing import CliRunner

from cli import app
from coder.model.folder import SOURCES_DIR, read_card, read_config
from coder.assembly import load_model
from coder.pipeline import code_batch
from coder.train.build import Inputs, build_model
from coder.errors import UsageError
from coder.train.plm import TrainingOptions, finished
from coder.train.stacking import default_sources
from coder.candidates.dense_search import LAYERS_FILE
from coder.estimator import read_state

runner = CliRunner()


def _write(tmp_path, frames: dict[str, pl.DataFrame]):
    paths = {}
    for name, frame in frames.items():
        paths[name] = tmp_path / f"{name}.parquet"
        frame.write_parquet(paths[name])
    return paths


def _build(tmp_path, tiny_model_path, inputs: Inputs):
    out = tmp_path / "model"
    build_model(inputs=inputs, out=out, text_column="text", encoder_path=tiny_model_path.parent / "encoder",
                encoder_name="tiny", codes_file=None, options=TrainingOptions(epochs=1), resume=False, command="test", folds=2,
                sources=default_sources(sentence_encoder=tiny_model_path.parent / "encoder"))
    return out


@pytest.mark.slow
def test_notes_and_codes_alone_build_a_model_of_more_than_plm_icd(tiny_model_path, tiny_codiesp, tmp_path):
    notes, codes, _ = tiny_codiesp
    paths = _write(tmp_path, {"notes": notes.select("note_id", "text"), "codes": codes})
    out = _build(tmp_path, tiny_model_path, Inputs(notes=paths["notes"], codes=paths["codes"]))
    config = read_config(out)
    assert {s.name for s in config.sources} >= {"ontology", "dense", "tfidf"} and "lexicon" not in {s.name for s in config.sources}
    card = read_card(out)
    assert config.rerankers and "held-out fifth" in card.training["dev"] and config.terms == "terms.parquet"
    assert [row["ranking"] for row in card.evaluation["rows"]][-1].startswith("whole model")
    assert sorted(p.name for p in (out / "sources" / "dense" / "encoder").iterdir()) == sorted(
        p.name for p in (tiny_model_path.parent / "encoder").iterdir())  # a copy of an encoder not packaged
    model = load_model(out, device="cpu")
    tfidf = next(source for source in model.stack.sources if source.name == "tfidf")
    assert tfidf.train_matrix_.shape[0] == notes.height  # the shipped sources learnt from every note, dev's too
    predictions = code_batch(model, notes.select("note_id", "text"), top_k=20).predictions
    assert set("+".join(predictions["source"]).split("+")) - {"plm_icd"}
    unseen = predictions.join(codes, on=["code", "system"], how="anti")
    assert unseen.height > 0  # codes never seen in training reach the output


@pytest.mark.slow
def test_spans_and_a_second_language_add_the_evidence_lexicon(trained_model, tiny_codiesp):
    notes, _, _ = tiny_codiesp
    out = trained_model.folder  # notes with text_es, spans and dev files (conftest)
    config = read_config(out)
    assert {"lexicon_es", "lexicon"} <= {s.name for s in config.sources} and read_card(out).training["dev"] == "dev files"
    assert not [f for f in out.rglob("*") if f.suffix in (".pkl", ".joblib", ".pt")]
    # --sentence-layers 1: the dense search carries its distilled layer and encodes the sentences with it
    dense = read_state(out / SOURCES_DIR / "dense", "dense.json", what="dense search")
    assert dense["params"]["sentence_layers"] == LAYERS_FILE and (out / SOURCES_DIR / "dense" / LAYERS_FILE).is_file()
    model = load_model(out, device="cpu")
    assert model.text_columns[:2] == ("text", "text_es")
    predictions = code_batch(model, notes, top_k=5).predictions
    assert predictions["source"].str.contains("lexicon_es").any()
    english = code_batch(model, notes.select("note_id", "text"), top_k=5).predictions
    # Sources that read text_es stay silent without it; the lexicon projected onto English still answers.
    assert not english["source"].str.contains("_es").any() and english.height


def test_dev_notes_without_dev_codes_is_a_usage_error(tiny_model_path, tmp_path):
    data = tiny_model_path.parent / "data"
    result = runner.invoke(app, ["train", "--notes", str(data / "notes.parquet"), "--codes", str(data / "codes.parquet"),
                                 "--dev-notes", str(data / "notes.parquet"), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "give both --dev-notes and --dev-codes" in result.output


@pytest.mark.slow
def test_resume_keeps_a_trained_plm_icd_and_fits_the_rest_again(tiny_model_path, tiny_codiesp, tmp_path, monkeypatch):
    notes, codes, _ = tiny_codiesp
    paths = _write(tmp_path, {"notes": notes.select("note_id", "text"), "codes": codes})
    inputs = Inputs(notes=paths["notes"], codes=paths["codes"])
    out = _build(tmp_path, tiny_model_path, inputs)
    first, first_card = read_config(out), read_card(out)
    kept = {name: digest for name, digest in first.files.items() if name.startswith(("plm_icd/", "onnx/"))}
    (out / "sources" / "stale").mkdir()  # a source an earlier stack had
    (out / "sources" / "stale" / "x.json").write_text("{}")
    monkeypatch.setattr("coder.train.build.train", lambda **_: pytest.fail("PLM-ICD trained again"))
    build_model(inputs=inputs, out=out, text_column="text", encoder_path=tiny_model_path.parent / "encoder",
                encoder_name="tiny", codes_file=None, options=TrainingOptions(epochs=1), resume=True, command="test", folds=2,
                sources=default_sources(sentence_encoder=tiny_model_path.parent / "encoder"))
    again = read_config(out)
    assert {name: again.files[name] for name in kept} == kept and not (out / "sources" / "stale").exists()
    assert again.components == first.components and read_card(out).training == first_card.training
    assert code_batch(load_model(out, device="cpu"), notes.select("note_id", "text"), top_k=5).predictions.height
    as_built = {"sources": inputs.sha256(), "options": TrainingOptions(epochs=1), "text_column": "text",
                "encoder": first_card.encoder, "codes_file": None}
    assert finished(out, **as_built)
    for changed, message in [({"options": TrainingOptions(epochs=2)}, "other options"),
                             ({"sources": {**inputs.sha256(), "other.parquet": "0"}}, "other input files"),
                             ({"text_column": "text_es"}, "other text column"),
                             ({"encoder": {"name": "another", "sha256": "0"}}, "other encoder"),
                             ({"codes_file": paths["codes"]}, "other code list")]:
        with pytest.raises(UsageError, match=message):
            finished(out, **{**as_built, **changed})
