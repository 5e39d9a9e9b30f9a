"""Run mechanics (screen, batches, parts, resume, manifest) with a stand-in model; the real stages are
tested in test_model_scorer and through the CLI in test_cli_predict."""

import errno
import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import coder.io.atomic
import coder.run
from coder.engines.local import LocalEngine
from coder.errors import InputFileError, RunIOError, UsageError
from coder.io.outputs import claim_outputs
from coder.io.parts import PartsFolder
from coder.model.folder import read_config
from coder.run import ModelRecord, PredictOptions
from coder.schema import NOTE_ID, PREDICTION_SCHEMA, QUARANTINE_SCHEMA, TEXT, TEXT_ES, QuarantineReason
from standin import StandInModel, write_notes


def StandIn(fail_at_call: int | None = None) -> StandInModel:
    return StandInModel(fail_at_call=fail_at_call)


def run_batches(source, *, model, out, options):
    with claim_outputs(source, out=out, quarantine=options.quarantine) as outputs:
        plan = coder.run.plan_run(source, text_columns=model.text_columns, options=options)
        return coder.run.run_batches(plan, model=ModelRecord.of(model), outputs=outputs, options=options,
                                     engine=LocalEngine(model))


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
        "over_max_note_chars": 0,
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


def test_a_dump_without_notes_is_refused_and_writes_nothing(tmp_path):
    pl.DataFrame(schema={NOTE_ID: pl.String, TEXT: pl.String}).write_parquet(tmp_path / "empty.parquet")
    with pytest.raises(InputFileError, match="no input notes"):
        run_batches(tmp_path / "empty.parquet", model=StandIn(), out=tmp_path / "out.parquet", options=PredictOptions(quiet=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.parquet"]  # no parts, no lock, no output


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


@pytest.mark.parametrize(("top_k", "batch_size", "max_note_chars"), [(0, 2, 10), (5, 0, 10), (5, 2, 0)],
                         ids=["top-k", "batch-size", "max-note-chars"])
def test_bad_options_are_refused(top_k, batch_size, max_note_chars):
    with pytest.raises(UsageError, match="at least 1"):
        PredictOptions(top_k=top_k, batch_size=batch_size, max_note_chars=max_note_chars)


def _interrupted(dump, out):
    """A run killed at its third batch: batches 0 (two notes coded) and 1 (two rows quarantined) are done."""
    with pytest.raises(KeyboardInterrupt):
        run_batches(dump, model=StandIn(fail_at_call=2), out=out, options=PredictOptions(batch_size=2, quiet=True))
    return out.with_name(f"{out.name}.parts")


@pytest.mark.parametrize(
    ("name", "damage", "batch"),
    [
        ("predictions-000000.parquet", None, 0),
        ("predictions-000000.parquet", b"", 0),
        ("predictions-000000.parquet", b"PAR1 not a parquet file PAR1", 0),
        ("predictions-000000.parquet", "predictions-000001.parquet", 0),  # a readable part with other rows
        ("quarantine-000001.parquet", None, 1),
        ("done-000000.json", b"{", 0),
        ("done-000001.json", b"", 1),
    ],
    ids=["part-missing", "part-empty", "part-corrupt", "part-short", "quarantine-missing", "marker-corrupt", "marker-empty"],
)
def test_resume_codes_a_lost_or_damaged_batch_again(tmp_path, dump, caplog, name, damage, batch):
    fresh = run_batches(dump, model=StandIn(), out=tmp_path / "fresh.parquet", options=PredictOptions(batch_size=2, quiet=True))
    out = tmp_path / "out.parquet"
    parts = _interrupted(dump, out)
    target = parts / name
    if damage is None:
        target.unlink()
    elif isinstance(damage, str):
        target.write_bytes((parts / damage).read_bytes())
    else:
        target.write_bytes(damage)
    with caplog.at_level(logging.WARNING):
        summary = run_batches(dump, model=StandIn(), out=out, options=PredictOptions(batch_size=2, resume=True, quiet=True))
    assert f"finished batch {batch} is damaged" in caplog.text
    assert (summary.resumed_batches, summary.recomputed_batches) == (1, 1)
    assert json.loads((tmp_path / "out.manifest.json").read_text())["timing"]["resume_recomputed_batches"] == 1
    assert summary.input_rows == fresh.input_rows and summary.quarantined == fresh.quarantined
    assert pl.read_parquet(out).equals(pl.read_parquet(tmp_path / "fresh.parquet"))
    assert pl.read_parquet(tmp_path / "out.quarantine.parquet").equals(pl.read_parquet(tmp_path / "fresh.quarantine.parquet"))


def test_resume_refuses_batches_that_ran_on_another_device(tmp_path, dump):
    out = tmp_path / "out.parquet"
    _interrupted(dump, out)
    gpu = StandIn()
    gpu.execution_provider, gpu.precision = "CUDAExecutionProvider", "fp16"
    with pytest.raises(UsageError, match="ran on CPUExecutionProvider fp32, this run on CUDAExecutionProvider fp16"):
        run_batches(dump, model=gpu, out=out, options=PredictOptions(batch_size=2, resume=True, quiet=True))
    assert not out.exists()


def test_a_value_that_is_not_utf8_quarantines_its_row_and_the_rest_is_coded(tmp_path):
    notes = write_notes(tmp_path / "notes.parquet", ["a", b"\xff\xfe", "c", "d"], ["fever", "cough", b"bad \xff", "rash"])
    out = tmp_path / "out.parquet"
    summary = run_batches(notes, model=StandIn(), out=out, options=PredictOptions(quiet=True))
    assert pl.read_parquet(tmp_path / "out.quarantine.parquet").select(NOTE_ID, "row", "reason").rows() == [
        (None, 1, QuarantineReason.INVALID_UTF8), ("c", 2, QuarantineReason.INVALID_UTF8)]
    assert sorted(pl.read_parquet(out).get_column(NOTE_ID).unique()) == ["a", "d"]
    assert summary.notes_coded == 2 and summary.quarantined == {QuarantineReason.INVALID_UTF8: 2}


def test_ids_are_trimmed_before_the_duplicate_rule_and_blank_ids_are_quarantined(tmp_path):
    notes = tmp_path / "notes.parquet"
    pl.DataFrame({NOTE_ID: [" n1", "n1", "n1 ", "", "  ", "n2\t"], TEXT: ["fever"] * 6}).write_parquet(notes)
    out = tmp_path / "out.parquet"
    run_batches(notes, model=StandIn(), out=out, options=PredictOptions(quiet=True))
    assert sorted(pl.read_parquet(out).get_column(NOTE_ID).unique()) == ["n1", "n2"]
    assert pl.read_parquet(tmp_path / "out.quarantine.parquet").select(NOTE_ID, "row", "reason").rows() == [
        ("n1", 1, QuarantineReason.DUPLICATE_NOTE_ID), ("n1", 2, QuarantineReason.DUPLICATE_NOTE_ID),
        ("", 3, QuarantineReason.BLANK_NOTE_ID), ("", 4, QuarantineReason.BLANK_NOTE_ID)]


@pytest.mark.parametrize("encoding", ["arrow-dictionary", "polars-categorical"])
def test_dictionary_encoded_strings_are_read_as_strings(tmp_path, encoding):
    notes = tmp_path / "notes.parquet"
    ids, texts = ["a", "b", "c"], ["fever", "cough", "fever"]
    if encoding == "arrow-dictionary":  # what pandas writes for a category column
        pq.write_table(pa.table({NOTE_ID: pa.array(ids).dictionary_encode(), TEXT: pa.array(texts).dictionary_encode()}), notes)
    else:
        pl.DataFrame({NOTE_ID: ids, TEXT: texts}, schema={NOTE_ID: pl.Categorical, TEXT: pl.Categorical}).write_parquet(notes)
    summary = run_batches(notes, model=StandIn(), out=tmp_path / "out.parquet", options=PredictOptions(quiet=True))
    assert summary.notes_coded == 3
    assert pl.read_parquet(tmp_path / "out.parquet").schema == PREDICTION_SCHEMA


def test_a_partitioned_folder_is_read_recursively_and_skipped_files_are_recorded(tmp_path, monkeypatch, caplog):
    dump = tmp_path / "dump"
    for folder in ("site=A", "site=B", "_temporary"):
        (dump / folder).mkdir(parents=True)
    pl.DataFrame({NOTE_ID: ["a1", "a2"], TEXT: ["fever", "cough"]}).write_parquet(dump / "site=A" / "part-0.parquet")
    pl.DataFrame({NOTE_ID: ["b1"], TEXT: ["rash"]}).write_parquet(dump / "site=B" / "part-0.PARQUET")
    for hidden in (".partial.parquet", "_temporary/part-9.parquet"):
        pl.DataFrame({NOTE_ID: ["x"], TEXT: ["not read"]}).write_parquet(dump / hidden)
    (dump / "_SUCCESS").touch()
    (dump / "README.txt").write_text("not notes")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        summary = run_batches("dump", model=StandIn(), out=tmp_path / "out.parquet", options=PredictOptions(quiet=True))
    assert summary.input_rows == 3
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    assert [f["path"] for f in manifest["inputs"]] == [str(dump / "site=A" / "part-0.parquet"), str(dump / "site=B" / "part-0.PARQUET")]
    skipped = [dump / ".partial.parquet", dump / "README.txt", dump / "_SUCCESS", dump / "_temporary"]
    assert manifest["skipped_files"] == sorted(map(str, skipped))
    assert "4 files not read" in caplog.text


@pytest.mark.parametrize(("after_batch", "change", "match"), [
    (0, "replace", "changed during the run"),  # met when its next batch is read
    (0, "remove", "vanished during the run"),
    (3, "replace", "changed during the run"),  # the last batch: met before the outputs are published
], ids=["replaced-mid-file", "vanished-mid-file", "replaced-after-the-last-batch"])
def test_an_input_file_changed_during_the_run_stops_it_and_publishes_nothing(tmp_path, monkeypatch, after_batch, change, match):
    dump = tmp_path / "dump"
    dump.mkdir()
    pl.DataFrame({NOTE_ID: ["a", "b"], TEXT: ["fever", "cough"]}).write_parquet(dump / "1.parquet")
    pl.DataFrame({NOTE_ID: ["c", "d"], TEXT: ["rash", "pain"]}).write_parquet(dump / "2.parquet")
    six = tmp_path / "six.parquet"
    pl.DataFrame({NOTE_ID: [f"n{i}" for i in range(6)], TEXT: ["new"] * 6}).write_parquet(six)
    victim = dump / ("1.parquet" if after_batch == 0 else "2.parquet")
    original = victim.read_bytes()
    coded = []

    def write_then_change(parts, index, **written):
        write_batch(parts, index, **written)
        coded.append(index)
        if index == after_batch:  # a real rename over the input, or its removal, between two batches
            os.replace(six, victim) if change == "replace" else victim.unlink()

    write_batch = PartsFolder.write_batch
    monkeypatch.setattr(PartsFolder, "write_batch", write_then_change)
    out = tmp_path / "out.parquet"
    options = PredictOptions(batch_size=1, quiet=True)
    with pytest.raises(InputFileError, match=f"{victim}: the input file {match}"):
        run_batches(dump, model=StandIn(), out=out, options=options)
    assert coded == list(range(after_batch + 1))
    assert not out.exists() and not (tmp_path / "out.manifest.json").exists()
    assert (tmp_path / "out.parquet.parts").is_dir()
    monkeypatch.undo()
    victim.write_bytes(original)  # the file is back (a new modification time, the same bytes): the run resumes
    summary = run_batches(dump, model=StandIn(), out=out, options=replace(options, resume=True))
    assert summary.resumed_batches == after_batch + 1
    assert sorted(pl.read_parquet(out).get_column(NOTE_ID).unique()) == ["a", "b", "c", "d"]


def test_a_note_longer_than_max_note_chars_is_coded_on_its_beginning_and_counted(tmp_path):
    notes = tmp_path / "notes.parquet"
    pl.DataFrame({NOTE_ID: ["whole", "cut", "long"], TEXT: ["fever and", "fever and cough" * 1000, "long"]}).write_parquet(notes)
    model = StandIn()
    out = tmp_path / "out.parquet"
    summary = run_batches(notes, model=model, out=out, options=PredictOptions(max_note_chars=9, quiet=True))
    scores = {note: frame.sort("code").get_column("score").to_list()
              for (note,), frame in pl.read_parquet(out).group_by(NOTE_ID)}
    assert scores["cut"] == scores["whole"]  # the stand-in scores the text: it was given the first 9 characters
    assert (summary.truncated, summary.over_max_note_chars) == (2, 1)  # "long": truncated by the scorer, not cut
    assert "2 truncated, 1 of them cut at 9 characters" in summary.lines()[0]
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    assert (manifest["counts"]["truncated"], manifest["counts"]["over_max_note_chars"]) == (2, 1)
    assert manifest["options"]["max_note_chars"] == 9


@pytest.mark.parametrize("file", [".predictions-000002.parquet", ".out.parquet."], ids=["part", "output"])
def test_a_full_disk_stops_the_run_with_one_error_and_resume_finishes_it(tmp_path, dump, monkeypatch, file):
    def full_disk(path, mode="r", *args, **kwargs):  # the real full disk stays a manual check
        if Path(path).name.startswith(file):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(coder.io.atomic, "open", full_disk, raising=False)
    out = tmp_path / "out.parquet"
    options = PredictOptions(batch_size=2, quiet=True)
    with pytest.raises(RunIOError, match=r"cannot write it \(No space left on device\); free space"):
        run_batches(dump, model=StandIn(), out=out, options=options)
    assert not out.exists()
    monkeypatch.undo()
    summary = run_batches(dump, model=StandIn(), out=out, options=replace(options, resume=True))
    assert summary.resumed_batches == (2 if file.startswith(".predictions") else 5)
    assert sorted(pl.read_parquet(out).get_column(NOTE_ID).unique()) == ["a", "b", "g"]


@pytest.mark.parametrize("listed", [False, True], ids=["no-code-list", "codes-file"])
def test_a_record_read_from_the_folder_is_the_loaded_models(tmp_path, tiny_model_path, listed):
    from coder.assembly import load_model  # the tiny model: loaded here only to compare

    codes = tmp_path / "codes.tsv" if listed else None
    if codes:
        codes.write_text("code\tdescription\tsystem\n3E0T3CZ\tIntroduction of regional anesthetic\tICD-10-PCS\n")
    read = ModelRecord.read(tiny_model_path, read_config(tiny_model_path), device="cpu", precision="auto", codes_file=codes)
    assert read == ModelRecord.of(load_model(tiny_model_path, device="cpu", codes_file=codes))


def test_a_record_read_from_the_folder_checks_the_precision_as_workers_will(tiny_model_path):
    with pytest.raises(UsageError, match="precision must be one of"):
        ModelRecord.read(tiny_model_path, read_config(tiny_model_path), device="cpu", precision="int4", codes_file=None)
