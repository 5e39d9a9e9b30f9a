"""Run mechanics (screen, batches, parts, resume, manifest) with a stand-in model; the real stages are
tested in test_model_scorer and through the CLI in test_cli_predict."""

import json
import polars as pl
import pytest

import coder.run
from coder.engines.local import code_locally
from coder.errors import UsageError
from coder.run import PredictOptions
from coder.schema import NOTE_ID, PREDICTION_SCHEMA, QUARANTINE_SCHEMA, TEXT, TEXT_ES, QuarantineReason
from standin import StandInModel


def StandIn(fail_at_call: int | None = None) -> StandInModel:
    return StandInModel(fail_at_call=fail_at_call)


def run_batches(source, *, model, out, options):
    return coder.run.run_batches(source, model=model, out=out, options=options, engine=code_locally)


@pytest.fixture
def dump(tmp_path):
    folder = tmp_path / "dump"
    folder.mkdir()
    pl.DataFrame(
        {NOTE_ID: ["a", "b", None, "c", "d"], TEXT: ["fever", "long note", "x", "", "~"]}
    ).write_parquet(folder / "1.parquet")
    pl.DataFrame({NOTE_ID: ["a", "e", "f", "g"], TEXT: ["again", "quiet", None, "cough"]}).write_parquet(
        folder / "2.parquet"
    )
    return folder


def test_every_input_row_is_coded_or_quarantined(tmp_path, dump):
    out = tmp_path / "out.parquet"
    summary = run_batches(dump, model=StandIn(), out=out, options=PredictOptions(batch_size=2, quiet=True))
    predictions = pl.read_parquet(out)
    quarantine = pl.read_parquet(tmp_path / "out.quarantine.parquet")
    assert predictions.schema == PREDICTION_SCHEMA
    assert quarantine.schema == QUARANTINE_SCHEMA
    assert sorted(predictions.get_column(NOTE_ID).unique()) == ["a", "b", "g"]
    assert quarantine.select(NOTE_ID, "row", "reason").rows() == [
        (None, 2, QuarantineReason.NULL_NOTE_ID),
        ("c", 3, QuarantineReason.EMPTY_TEXT),
        ("d", 4, QuarantineReason.UNPROCESSABLE),
        ("a", 0, QuarantineReason.DUPLICATE_NOTE_ID),
        ("f", 2, QuarantineReason.NULL_TEXT),
    ]
    assert summary.input_rows == 9 == summary.notes_coded + sum(summary.quarantined.values())
    assert (summary.notes_coded, summary.notes_without_codes, summary.truncated, summary.codes_written) == (4, 1, 1, 12)
    assert summary.skipped_columns == (TEXT_ES,)
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    assert manifest["counts"] == {
        "input_rows": 9,
        "notes_coded": 4,
        "notes_without_codes": 1,
        "quarantined": {"duplicate_note_id": 1, "empty_text": 1, "null_note_id": 1, "null_text": 1, "unprocessable_text": 1},
        "truncated": 1,
        "codes_written": 12,
        "skipped_components": 1,
    }
    assert [len(f["sha256"]) for f in manifest["inputs"]] == [64, 64]
    assert {k: manifest["model"][k] for k in ("hash", "components", "execution_provider", "precision")} == {
        "hash": "stand-in-1", "components": {"plm_icd": "1"}, "execution_provider": "CPUExecutionProvider", "precision": "fp32"}
    assert set(manifest["timing"]["stage_seconds"]) == {"score", "candidates", "rerank", "validate", "rank"}
    assert not (tmp_path / "out.parquet.parts").exists()


def test_top_k_is_passed_to_the_model(tmp_path, dump):
    run_batches(dump, model=StandIn(), out=tmp_path / "out.parquet", options=PredictOptions(top_k=1, quiet=True))
    assert pl.read_parquet(tmp_path / "out.parquet").get_column("rank").max() == 1


def test_empty_input_writes_empty_outputs_with_the_schema(tmp_path):
    pl.DataFrame(schema={NOTE_ID: pl.String, TEXT: pl.String}).write_parquet(tmp_path / "empty.parquet")
    summary = run_batches(tmp_path / "empty.parquet", model=StandIn(), out=tmp_path / "out.parquet", options=PredictOptions(quiet=True))
    assert summary.input_rows == 0
    assert pl.read_parquet(tmp_path / "out.parquet").schema == PREDICTION_SCHEMA
    assert pl.read_parquet(tmp_path / "out.quarantine.parquet").schema == QUARANTINE_SCHEMA


def test_resume_after_interruption_neither_repeats_nor_loses_notes(tmp_path, dump):
    out = tmp_path / "out.parquet"
    with pytest.raises(KeyboardInterrupt):
        # Batch 1 (a null id and an empty text) is all quarantined and not scored: the 2nd call is batch 2.
        run_batches(dump, model=StandIn(fail_at_call=2), out=out, options=PredictOptions(batch_size=2, quiet=True))
    assert not out.exists()
    second = StandIn()
    summary = run_batches(dump, model=second, out=out, options=PredictOptions(batch_size=2, resume=True, quiet=True))
    assert summary.resumed_batches == 2
    assert "a" not in second.scorer.seen and "b" not in second.scorer.seen
    predictions = pl.read_parquet(out)
    assert predictions.select(NOTE_ID, "code").is_duplicated().sum() == 0
    assert sorted(predictions.get_column(NOTE_ID).unique()) == ["a", "b", "g"]
    assert summary.input_rows == 9 == summary.notes_coded + sum(summary.quarantined.values())


def test_resume_refuses_a_changed_model_component_and_names_it(tmp_path, dump):
    out = tmp_path / "out.parquet"
    with pytest.raises(KeyboardInterrupt):
        run_batches(dump, model=StandIn(fail_at_call=2), out=out, options=PredictOptions(batch_size=2, quiet=True))
    changed = StandIn()
    changed.hash, changed.components = "stand-in-2", {"plm_icd": "1", "reranker.a+b": "2"}
    with pytest.raises(UsageError, match=r"differs in model, model_components.reranker.a\+b"):
        run_batches(dump, model=changed, out=out, options=PredictOptions(batch_size=2, resume=True, quiet=True))


def test_resume_refuses_changed_inputs(tmp_path, dump):
    out = tmp_path / "out.parquet"
    with pytest.raises(KeyboardInterrupt):
        run_batches(dump, model=StandIn(fail_at_call=2), out=out, options=PredictOptions(batch_size=2, quiet=True))
    pl.DataFrame({NOTE_ID: ["z"], TEXT: ["new"]}).write_parquet(dump / "3.parquet")
    with pytest.raises(UsageError, match="differs in inputs"):
        run_batches(dump, model=StandIn(), out=out, options=PredictOptions(batch_size=2, resume=True, quiet=True))


@pytest.mark.parametrize(("top_k", "batch_size"), [(0, 2), (5, 0)], ids=["top-k", "batch-size"])
def test_bad_options_are_refused(top_k, batch_size):
    with pytest.raises(UsageError, match="at least 1"):
        PredictOptions(top_k=top_k, batch_size=batch_size)
