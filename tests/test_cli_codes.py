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


def test_a_prefix_is_assignable_only_at_a_level_the_models_labels_use(tiny_model_path: Path) -> None:
    shipped = json.loads(_run("validate", "--json", "0DT6", "0DT60", "BW21Z").stdout)
    assert [(row["status"], row["assignable"]) for row in shipped] == [("prefix", True), ("prefix", False), ("prefix", False)]
    full_codes = json.loads(_run("validate", "--json", "--model", str(tiny_model_path), "0DT6").stdout)
    assert (full_codes[0]["status"], full_codes[0]["assignable"]) == ("prefix", False)


def test_a_missing_codes_file_is_a_usage_error(tmp_path: Path) -> None:
    result = _run("validate", "--codes-file", str(tmp_path / "absent.csv"), "N44.8")
    assert result.exit_code == 2
