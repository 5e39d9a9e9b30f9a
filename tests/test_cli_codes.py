"""`coder codes show` and `coder codes validate` through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def _run(*args: str, stdin: str | None = None):
    return runner.invoke(app, ["codes", *args], input=stdin)


@pytest.mark.parametrize("command", ["show", "validate"], ids=["show", "validate"])
def test_help(command: str) -> None:
    result = _run(command, "--help")
    assert result.exit_code == 0
    assert "--codes-file" in result.output and "--system" in result.output


def test_show_a_known_code() -> None:
    result = _run("show", "e119")
    assert result.exit_code == 0
    assert result.output.startswith("E11.9 (ICD-10-CM, inferred): billable")
    assert "E08-E13  Diabetes mellitus (E08-E13)" in result.output
    assert "excludes1:" in result.output


def test_show_a_pcs_prefix() -> None:
    result = _run("show", "0DT6", "--system", "ICD-10-PCS")
    assert result.exit_code == 0
    assert "0DT6 (ICD-10-PCS): prefix\n  Resection of Stomach" in result.output


def test_show_an_unknown_code_exits_1() -> None:
    result = _run("show", "ZZZ.999")
    assert result.exit_code == 1
    assert "not a code: an ICD-10-CM code has a digit second" in result.output


def test_validate_json_keys_and_exit_0() -> None:
    result = _run("validate", "--json", "--system", "ICD-10-CM", "n448", "R51")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [list(row) for row in rows] == [["input", "system", "canonical", "status", "description", "assignable"]] * 2
    assert rows[0] == {"input": "n448", "system": "ICD-10-CM", "canonical": "N44.8", "status": "billable",
                       "description": "Other noninflammatory disorders of the testis", "assignable": True}
    assert "inferred" not in result.stderr


@pytest.mark.parametrize(
    "code", ["ZZZ.999", "E11.99X9", "0ZZZZZZ", "ABC"], ids=["garbage", "made-up-cm", "made-up-pcs", "letters"]
)
def test_validate_unknown_exits_1(code: str) -> None:
    result = _run("validate", "--json", "N44.8", code)
    assert result.exit_code == 1
    assert json.loads(result.stdout)[1]["status"] == "unknown"


def test_validate_text_says_which_system_was_inferred() -> None:
    result = _run("validate", "N44.8", "0DT6", "ABC")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].split("\t") == ["N44.8", "N44.8", "ICD-10-CM, inferred", "billable", "assignable",
                                    "Other noninflammatory disorders of the testis"]
    assert lines[1].split("\t")[2:5] == ["ICD-10-PCS, inferred", "prefix", "assignable"]  # the shipped model's level
    assert lines[2].split("\t")[1:5] == ["-", "no system, inferred", "unknown", "not assignable"]
    assert "inferred per code: ICD-10-CM 1, ICD-10-PCS 1, no system (unreadable) 1" in result.stderr


def test_validate_reads_stdin() -> None:
    result = _run("validate", "--json", "-", "R51", stdin="n448\n\n 0dt6 \n")
    assert result.exit_code == 0
    assert [row["canonical"] for row in json.loads(result.stdout)] == ["N44.8", "0DT6", "R51"]


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--system", "ICD-9", "N44.8"), "unknown code system 'ICD-9'"), ((), "no codes to validate")],
    ids=["bad-system", "no-codes"],
)
def test_validate_usage_errors_exit_2(args: tuple[str, ...], message: str) -> None:
    result = _run("validate", *args, stdin="")
    assert result.exit_code == 2
    assert message in result.stderr


def test_validate_with_a_codes_file(tmp_path: Path, tiny_model_path: Path) -> None:
    codes_file = tmp_path / "codes.csv"
    codes_file.write_text("code,description\n3E0T3CZ,Introduction of anesthetic into peripheral nerves\n")
    assert _run("validate", "--model", str(tiny_model_path), "3E0T3CZ").exit_code == 1  # the tiny model has no code list
    result = _run("validate", "--json", "--model", str(tiny_model_path), "--codes-file", str(codes_file), "3E0T3CZ")
    assert result.exit_code == 0
    assert json.loads(result.stdout)[0]["status"] == "billable" and json.loads(result.stdout)[0]["assignable"]


def test_a_prefix_is_a_code_only_at_a_level_the_models_labels_use(tiny_model_path: Path) -> None:
    shipped = _run("validate", "--json", "0DT6", "S00.32X")
    assert shipped.exit_code == 0
    assert [(row["status"], row["assignable"]) for row in json.loads(shipped.stdout)] == [("prefix", True), ("prefix", True)]
    full_codes = _run("validate", "--json", "--model", str(tiny_model_path), "0DT6")
    assert full_codes.exit_code == 1
    assert json.loads(full_codes.stdout)[0] == {
        "input": "0DT6", "system": "ICD-10-PCS", "canonical": "0DT6", "status": "unknown",
        "description": "a prefix of real codes at a length the model does not use (none)", "assignable": False}


@pytest.mark.parametrize("code", ["B", "0", "X", "BW21Z", "0DT60", "10E0XZ", "W19.X"],
                         ids=["section-B", "section-0", "section-X", "5-characters", "5-axes", "6-characters", "cm-5"])
def test_other_prefixes_of_real_codes_are_unknown(code: str) -> None:
    result = _run("validate", "--json", code)
    assert result.exit_code == 1
    row = json.loads(result.stdout)[0]
    assert (row["status"], row["assignable"]) == ("unknown", False)
    levels = "5, 6" if row["system"] == "ICD-10-CM" else "4"  # the shipped model's levels
    assert row["description"] == f"a prefix of real codes at a length the model does not use ({levels})"


def test_show_judges_a_prefix_by_the_model() -> None:
    result = _run("show", "B")
    assert result.exit_code == 1
    assert result.output == "B (ICD-10-PCS, inferred): unknown\n  a prefix of real codes at a length the model does not use (4)\n"


def test_without_a_model_every_prefix_stays_a_prefix(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CODER_MODEL", str(tmp_path / "absent"))
    result = _run("validate", "--json", "B", "0DT60")
    assert [(row["status"], row["assignable"]) for row in json.loads(result.stdout)] == [("prefix", False)] * 2
    assert result.exit_code == 0


def test_a_listed_code_without_its_7th_character_is_valid_and_assignable(tmp_path: Path, tiny_model_path: Path) -> None:
    codes_file = tmp_path / "codes.tsv"
    codes_file.write_text("code\tdescription\nT81.4XX\tInfection following a procedure\n")
    result = _run("validate", "--json", "--model", str(tiny_model_path), "--codes-file", str(codes_file), "T81.4XX")
    assert result.exit_code == 0
    row = json.loads(result.stdout)[0]
    assert (row["status"], row["assignable"]) == ("valid", True)


def test_a_missing_codes_file_is_a_usage_error(tmp_path: Path) -> None:
    result = _run("validate", "--codes-file", str(tmp_path / "absent.csv"), "N44.8")
    assert result.exit_code == 2
