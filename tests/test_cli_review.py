import polars as pl
import pytest
from review_cases import write_case
from typer.testing import CliRunner

from cli import app
from coder.review import server
from coder.schema import CM, DECISION_SCHEMA, GOLD_SCHEMA

runner = CliRunner()


def test_help_lists_review_and_gold():
    result = runner.invoke(app, ["--help"])
    assert "review" in result.output and "gold" in result.output
    result = runner.invoke(app, ["review", "--help"])
    for option in ("--notes", "--out", "--gold", "--sample", "--seed", "--reviewer", "--host", "--port"):
        assert option in result.output


def test_review_prints_the_address_with_its_token(tmp_path, monkeypatch):
    predictions, notes = write_case(tmp_path)
    monkeypatch.setattr(server.Served, "run", lambda self: self.socket.close())  # no serving in a unit test
    result = runner.invoke(app, ["review", str(predictions), "--notes", str(notes), "--out", str(tmp_path / "d.parquet"),
                                 "--reviewer", "ana", "--sample", "1"])
    assert result.exit_code == 0, result.output
    assert "reviewing 1 notes (0 reviewed)" in result.stdout and "open http://127.0.0.1:" in result.stdout
    assert "/?token=" in result.stdout


@pytest.mark.parametrize(("notes", "code", "message"), [
    (pl.DataFrame({"note_id": ["n1"], "body": ["x"]}), 3, "neither a 'text' nor a 'text_es' column"),
    (pl.DataFrame({"note_id": ["other"], "text": ["x"]}), 2, "no note to review"),
], ids=["no-text-column", "no-predicted-note"])
def test_review_refuses_notes_it_cannot_show(tmp_path, notes, code, message):
    predictions, _ = write_case(tmp_path)
    other = tmp_path / "other.parquet"
    notes.write_parquet(other)
    result = runner.invoke(app, ["review", str(predictions), "--notes", str(other), "--out", str(tmp_path / "d.parquet")])
    assert result.exit_code == code and message in result.stderr


def test_gold_keeps_the_codes_every_reviewer_gave(tmp_path):
    files = []
    for reviewer, decisions in (("ana", ("accepted", "accepted", "added")), ("ben", ("accepted", "rejected", None))):
        rows = [("n1", CM, code, decision, reviewer, None, None, None, None)
                for code, decision in zip(("R50.9", "I10", "J45.909"), decisions) if decision]
        files.append(tmp_path / f"{reviewer}.parquet")
        pl.DataFrame(rows, schema=DECISION_SCHEMA, orient="row").write_parquet(files[-1])
    out = tmp_path / "codes.parquet"
    result = runner.invoke(app, ["gold", *map(str, files), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 codes on 1 notes; left out 1 the reviewers disagreed on" in result.stdout
    gold = pl.read_parquet(out)
    assert gold.schema == GOLD_SCHEMA
    assert gold.get_column("code").to_list() == ["J45.909", "R50.9"]
