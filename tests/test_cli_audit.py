import json

import polars as pl
import pytest
from typer.testing import CliRunner

from cli import app
from coder.schema import CM, PCS, PREDICTION_SCHEMA

runner = CliRunner()


@pytest.fixture
def files(tmp_path):
    """Gold for two notes and predictions that get one CM code right, one wrong, and miss the PCS code."""
    gold = tmp_path / "gold.parquet"
    pl.DataFrame({"note_id": ["n1", "n1", "n2"], "code": ["R50.9", "J18.9", "0DTJ0ZZ"], "system": [CM, CM, PCS]}).write_parquet(gold)
    predictions = tmp_path / "pred.parquet"
    pl.DataFrame(
        [
            ("n1", CM, "R50.9", "Fever, unspecified", 0.8, 1, True, "plm_icd", None, None, None, None, "release"),
            ("n1", CM, "I10", "Essential hypertension", 0.6, 2, True, "plm_icd", None, None, None, None, "release"),
            ("n2", PCS, "0DTJ4ZZ", "Resection of Appendix", 0.3, 1, False, "plm_icd", None, None, None, None, "release"),
            ("n9", CM, "I10", "not audited", 0.9, 1, True, "plm_icd", None, None, None, None, "release"),
        ],
        schema=PREDICTION_SCHEMA,
        orient="row",
    ).write_parquet(predictions)
    return predictions, gold


def test_help_lists_the_options():
    result = runner.invoke(app, ["audit", "--help"])
    assert result.exit_code == 0
    for option in ("--gold", "--json", "--report", "--sample", "--export", "--reviewed", "--seed"):
        assert option in result.output


def test_json_is_keyed_by_system(files):
    predictions, gold = files
    result = runner.invoke(app, ["audit", str(predictions), "--gold", str(gold), "--json"])
    assert result.exit_code == 0, result.output
    audit = json.loads(result.stdout)
    assert set(audit) == {CM, PCS, "valid_codes"}
    assert audit["valid_codes"] == {"code_list": None, "origin": "none", "truncations": {}}  # no manifest beside them
    for key in ("map", "p@5", "p@8", "p@15", "micro_f1", "macro_f1", "notes"):
        assert key in audit[CM]
    # CM: n1 ranks R50.9 (gold), I10: AP = 1/2; n9 is not in gold and is ignored
    assert audit[CM]["map"] == pytest.approx(0.5)
    assert audit[CM]["micro_f1"] == pytest.approx(0.5)
    assert (audit[PCS]["map"], audit[PCS]["notes"]) == (0.0, 1)
    assert (audit[CM]["predicted_notes_not_in_gold"], audit[PCS]["predicted_notes_not_in_gold"]) == (1, 0)


def test_report_and_review_round_trip(files, tmp_path):
    predictions, gold = files
    report, review = tmp_path / "audit.html", tmp_path / "review.csv"
    result = runner.invoke(
        app, ["audit", str(predictions), "--gold", str(gold), "--report", str(report), "--sample", "5", "--export", str(review)]
    )
    assert result.exit_code == 0, result.output
    assert "ICD-10-CM: 1 notes, MAP 0.500" in result.stdout
    assert ", 1 predicted notes not in the gold ignored\nICD-10-PCS:" in result.stdout
    assert report.read_text().startswith("<!DOCTYPE html>")
    sample = pl.read_csv(review)
    assert sample.height == 3  # n1's two CM codes and n2's PCS code; n9 is not audited
    sample.with_columns(pl.lit("correct").alias("verdict")).write_csv(review)
    result = runner.invoke(app, ["audit", "--reviewed", str(review), "--k", "1,2", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[CM]["p@2"]["precision"] == 1.0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--report", "x.html"], 2, "--report needs --gold"),
        (["--sample", "3"], 2, "--sample N and --export"),
        (["--gold", "NOTES"], 3, "missing code column 'code' in the codes"),
        (["--gold", "GOLD", "--k", "1,five"], 2, "comma-separated integers"),
    ],
    ids=["report-without-gold", "sample-without-export", "gold-is-not-gold", "bad-k"],
)
def test_known_errors_exit_with_one_line(files, args, code, message):
    predictions, gold = files
    notes = predictions.with_name("notes.parquet")
    pl.DataFrame({"note_id": ["n1"], "text": ["fever"]}).write_parquet(notes)
    args = [{"NOTES": str(notes), "GOLD": str(gold)}.get(a, a) for a in args]
    result = runner.invoke(app, ["audit", str(predictions), *args])
    assert result.exit_code == code
    assert message in result.output
    assert "Traceback" not in result.output


def _rewrite(path, **columns):
    """Rewrite a parquet file with ``columns`` replaced (a list of values each)."""
    frame = pl.read_parquet(path)
    frame.with_columns(pl.Series(name, values, dtype=frame[name].dtype) for name, values in columns.items()).write_parquet(path)


@pytest.mark.parametrize(
    ("target", "columns", "message"),
    [
        ("gold", {"system": ["CM", "CM", "PCS"]},
         "gold.parquet: column 'system' has unknown values 'CM' (2 rows), 'PCS' (1 row); expected 'ICD-10-CM' or 'ICD-10-PCS'"),
        ("predictions", {"system": ["icd-10-cm", "icd-10-cm", "pcs", CM]},
         "pred.parquet: column 'system' has unknown values 'icd-10-cm' (2 rows), 'pcs' (1 row); expected"),
        ("gold", {"code": ["R50.9", None, None]},
         "gold.parquet: column 'code' is null in 2 of 3 rows (0-based: 1, 2); every row needs a code"),
        ("predictions", {"note_id": ["n1", None, "n2", "n9"]},
         "pred.parquet: column 'note_id' is null in 1 of 4 rows (0-based: 1); every row needs a note_id"),
        ("predictions", {"code": [None] * 4}, "pred.parquet: column 'code' is null in 4 of 4 rows (0-based: 0, 1, 2, 3)"),
        ("predictions", {"note_id": ["n7", "n7", "n8", "n9"]},
         "pred.parquet: no predicted note is in {gold} (3 predicted notes, 2 gold notes, 0 in common)"),
    ],
    ids=["gold-system-abbreviated", "predicted-system-spelled-otherwise", "gold-null-code", "predicted-null-note-id",
         "predicted-null-code", "no-common-note"],
)
def test_audit_refuses_what_it_cannot_score(files, target, columns, message):
    predictions, gold = files
    _rewrite(gold if target == "gold" else predictions, **columns)
    result = runner.invoke(app, ["audit", str(predictions), "--gold", str(gold)])
    assert result.exit_code == 3
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"error: {predictions.parent}/{message.format(gold=gold)}")


def test_audit_refuses_an_empty_predictions_file(files):
    predictions, gold = files
    pl.read_parquet(predictions).clear().write_parquet(predictions)
    result = runner.invoke(app, ["audit", str(predictions), "--gold", str(gold), "--json"])
    assert result.exit_code == 3
    assert result.output == (f"error: {predictions}: no predicted note is in {gold} (0 predicted notes, 2 gold notes, "
                             "0 in common); give the gold codes of the notes that were predicted\n")


def test_gold_that_is_no_code_and_repeated_gold_rows_are_counted_in_json_text_and_html(files, tmp_path):
    predictions, gold = files
    written = pl.read_parquet(gold)
    extra = pl.DataFrame({"note_id": ["n1", "n1"], "code": ["ZZZ.999", "<b>X</b>"], "system": [CM, CM]})
    pl.concat([written, extra, *[written.head(1)] * 50]).write_parquet(gold)
    result = runner.invoke(app, ["audit", str(predictions), "--gold", str(gold), "--json"])
    assert result.exit_code == 0, result.output
    audit = json.loads(result.stdout)
    questioned = {key: audit[CM][key] for key in ("gold_rows", "duplicate_gold_rows", "invalid_gold_rows", "invalid_gold_codes")}
    assert questioned == {"gold_rows": 54, "duplicate_gold_rows": 50, "invalid_gold_rows": 2,
                          "invalid_gold_codes": [{"code": "<b>X</b>", "count": 1}, {"code": "ZZZ.999", "count": 1}]}
    assert (audit[PCS]["duplicate_gold_rows"], audit[PCS]["invalid_gold_rows"]) == (0, 0)
    # kept in the gold as CodiEsp's script keeps them: n1 ranks R50.9 (gold), I10 among 4 gold codes
    assert audit[CM]["map"] == pytest.approx(1 / 4) == pytest.approx(_official_map(pl.read_parquet(predictions), pl.read_parquet(gold), CM))
    report = tmp_path / "audit.html"
    result = runner.invoke(app, ["audit", str(predictions), "--gold", str(gold), "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert (f"{CM} gold: 2 gold codes are not valid codes, kept and scored as missed as CodiEsp's script keeps them: "
            "<b>X</b> (1), ZZZ.999 (1); 50 gold rows repeat an earlier row's note and code, scored once\n") in result.stdout
    assert f"{PCS} gold:" not in result.stdout
    html = report.read_text()
    assert "<b>" not in html and "<B>" not in html
    assert '<td class="text">&lt;b&gt;X&lt;/b&gt;</td><td>1</td>' in html and "&lt;B&gt;X&lt;/B&gt;" in html  # listed; and missed
    assert "<tr><td>54</td><td>50</td><td>2</td></tr>" in html


def _run_with_manifest(tmp_path, codes_file):
    """Predictions of a code that only a code list knows (3E0T3CZ, deleted from ICD-10-PCS) and a
    manifest beside them saying that list validated the run."""
    from coder.hashing import file_sha256

    predictions = tmp_path / "pred.parquet"
    pl.DataFrame([("n1", PCS, "3E0T3CZ", "listed", 0.9, 1, True, "plm_icd", None, None, None, None, "code_list"),
                  ("n1", PCS, "0DTJ0ZZ", "Resection of Appendix", 0.5, 2, True, "plm_icd", None, None, None, None, "release")],
                 schema=PREDICTION_SCHEMA, orient="row").write_parquet(predictions)
    manifest = {"model": {"truncations": {}}, "codes_file": {"path": str(codes_file), "sha256": file_sha256(codes_file)}}
    (tmp_path / "pred.manifest.json").write_text(json.dumps(manifest))
    gold = tmp_path / "gold.parquet"
    pl.DataFrame({"note_id": ["n1"], "code": ["0DTJ0ZZ"], "system": [PCS]}).write_parquet(gold)
    return predictions, gold


def test_audit_validates_with_the_code_list_the_run_used(tmp_path):
    codes_file = tmp_path / "codes.tsv"
    codes_file.write_text("code\tdescription\tsystem\n3E0T3CZ\tIntroduction of regional anesthetic\tICD-10-PCS\n")
    predictions, gold = _run_with_manifest(tmp_path, codes_file)
    result = runner.invoke(app, ["audit", str(predictions), "--gold", str(gold), "--json"])
    assert result.exit_code == 0, result.output
    audit = json.loads(result.stdout)
    assert audit[PCS]["map"] == pytest.approx(0.5)  # 3E0T3CZ is valid for this run: the gold code sits at rank 2
    assert audit["valid_codes"]["code_list"] == str(codes_file) and audit["valid_codes"]["origin"] == "the run's manifest"
    other = tmp_path / "other.tsv"
    other.write_text("code\tdescription\n")
    overridden = json.loads(runner.invoke(app, ["audit", str(predictions), "--gold", str(gold), "--json",
                                                "--codes-file", str(other)]).stdout)
    assert overridden[PCS]["map"] == pytest.approx(1.0)  # without the list 3E0T3CZ is dropped, as the official scorer would
    codes_file.write_text("code\tdescription\n")  # the list changed since the run
    changed = runner.invoke(app, ["audit", str(predictions), "--gold", str(gold)])
    assert changed.exit_code == 3 and "missing or has changed since; pass that code list with --codes-file" in changed.output


def _official_map(predictions: pl.DataFrame, gold: pl.DataFrame, system: str) -> float:
    """CodiEsp's scorer written out plainly: per note, codes in rank order, lower-cased, repeats dropped;
    AP over the note's distinct gold codes; mean over the notes both ranked and in the gold."""
    run = predictions.filter(pl.col("system") == system).sort("note_id", "rank")
    truth: dict[str, set[str]] = {}
    for note, code in gold.filter(pl.col("system") == system).select("note_id", "code").iter_rows():
        truth.setdefault(note, set()).add(code.lower())
    aps = []
    for (note,), rows in run.group_by("note_id", maintain_order=True):
        if note not in truth:
            continue
        ranked = list(dict.fromkeys(code.lower() for code in rows["code"]))
        hits = [k for k, code in enumerate(ranked, start=1) if code in truth[note]]
        aps.append(sum(i / k for i, k in enumerate(hits, start=1)) / len(truth[note]))
    return sum(aps) / len(aps)


@pytest.mark.slow
def test_audit_of_the_default_models_predictions_equals_the_official_computation(tmp_path):
    from pathlib import Path

    data = Path(__file__).resolve().parents[1] / "data" / "codiesp" / "dev"
    notes, out = tmp_path / "notes.parquet", tmp_path / "pred.parquet"
    pl.read_parquet(data / "notes.parquet").head(40).write_parquet(notes)
    assert runner.invoke(app, ["predict", str(notes), "--out", str(out), "--quiet"]).exit_code == 0
    gold = pl.read_parquet(data / "codes.parquet").join(pl.read_parquet(notes).select("note_id"), on="note_id")
    gold.write_parquet(tmp_path / "gold.parquet")
    audit = json.loads(runner.invoke(app, ["audit", str(out), "--gold", str(tmp_path / "gold.parquet"), "--json"]).stdout)
    predictions = pl.read_parquet(out)
    for system in (CM, PCS):
        assert audit[system]["map"] == pytest.approx(_official_map(predictions, gold, system), abs=1e-12)
    assert audit["valid_codes"]["code_list"].endswith("codiesp-minilm/codes.tsv")


def test_reviewed_decision_files_give_precision_and_agreement(tmp_path):
    from coder.schema import DECISION_SCHEMA

    files = []
    for reviewer, second in (("ana", "accepted"), ("ben", "rejected")):
        rows = [("n1", CM, "R50.9", "accepted", reviewer, None, 1, 0.8, None),
                ("n1", CM, "I10", second, reviewer, None, 2, 0.6, None),
                ("n1", None, None, "reviewed", reviewer, None, None, None, None)]
        files.append(tmp_path / f"{reviewer}.parquet")
        pl.DataFrame(rows, schema=DECISION_SCHEMA, orient="row").write_parquet(files[-1])
    one = runner.invoke(app, ["audit", "--reviewed", str(files[1]), "--k", "1,2"])
    assert one.exit_code == 0, one.output
    assert f"{CM}: 2 codes judged on 1 notes; P@1 1.000" in one.stdout and "P@2 0.500" in one.stdout
    both = runner.invoke(app, ["audit", "--reviewed", str(files[0]), "--reviewed", str(files[1]), "--k", "2"])
    assert both.exit_code == 0, both.output
    assert f"{files[0]} vs {files[1]}: {CM}: 2 codes on 1 notes reviewed by both; agreement 0.500, Cohen's kappa 0.000" in both.stdout
    mixed = runner.invoke(app, ["audit", "--reviewed", str(files[0]), "--reviewed", str(_csv(tmp_path))])
    assert mixed.exit_code == 2 and "one review CSV, or one or more" in mixed.stderr


def _csv(tmp_path):
    path = tmp_path / "review.csv"
    path.write_text("note_id,system,rank,code,verdict\nn1,ICD-10-CM,1,R50.9,correct\n")
    return path
