"""`coder prepare` builds a model's caches ahead of its first run, with the tiny model bundle."""


from typer.testing import CliRunner

from cli import app
from coder.ontology import ontology
from coder.ontology.cache import CACHE_DIR_ENV

runner = CliRunner()


def test_help_explains_the_option():
    result = runner.invoke(app, ["prepare", "--help"])
    assert result.exit_code == 0
    assert "--model" in result.output and "CODER_CACHE_DIR" in result.output


def test_prepare_builds_the_caches_once_and_says_where(tmp_path, tiny_model_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    # this process may hold the tables already (memoised): loaded, and built, again here
    ontology._load.cache_clear()
    ontology._release_tables.cache_clear()
    first = runner.invoke(app, ["prepare", "--model", str(tiny_model_path)])
    assert first.exit_code == 0, first.output
    assert "built icd10-" in first.stdout and f"cache folder {tmp_path / 'cache'} (from ${CACHE_DIR_ENV})" in first.stdout
    assert "preparing the icd10 tables" in first.stderr  # announced by default
    assert [path.name for path in (tmp_path / "cache").iterdir()] == [first.stdout.split()[1]]
    again = runner.invoke(app, ["prepare", "--model", str(tiny_model_path)])
    assert again.exit_code == 0, again.output
    assert "nothing to build" in again.stdout and "1 file, " in again.stdout


def test_an_unwritable_cache_folder_is_one_error_line(tmp_path, tiny_model_path, monkeypatch):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv(CACHE_DIR_ENV, str(blocker / "cache"))
    result = runner.invoke(app, ["prepare", "--model", str(tiny_model_path)])
    assert result.exit_code == 9
    assert result.stderr.startswith("error: cannot create the cache folder") and CACHE_DIR_ENV in result.stderr
