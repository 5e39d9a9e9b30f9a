"""The content-keyed cache, with a stand-in builder so it runs in milliseconds."""

from __future__ import annotations

import logging
from pathlib import Path

import platformdirs
import pytest

import coder
from coder.ontology.cache import CACHE_DIR_ENV, cache_dir, load_or_build


@pytest.fixture
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    path = tmp_path / "source.txt"
    path.write_text("A00 Cholera\n")
    return path


def _load(source: Path, calls: list[int], *, salt: str = "v1") -> dict:
    def build() -> dict:
        calls.append(1)
        return {"lines": source.read_text().splitlines()}

    return load_or_build(name="test", sources=[source], salt=salt, build=build)


def test_built_once_then_read_from_the_cache(source: Path) -> None:
    calls: list[int] = []
    assert _load(source, calls) == {"lines": ["A00 Cholera"]}
    assert _load(source, calls) == {"lines": ["A00 Cholera"]}
    assert len(calls) == 1
    assert len(list((source.parent / "cache").glob("test-*.json.gz"))) == 1


@pytest.mark.parametrize("change", ["source", "salt"], ids=["source-edited", "builder-changed"])
def test_rebuilt_when_the_key_changes(source: Path, change: str) -> None:
    calls: list[int] = []
    _load(source, calls)
    if change == "source":
        source.write_text("A01 Typhoid\n")
    tables = _load(source, calls, salt="v2" if change == "salt" else "v1")
    assert len(calls) == 2
    assert tables["lines"] == (["A01 Typhoid"] if change == "source" else ["A00 Cholera"])
    assert len(list((source.parent / "cache").glob("test-*.json.gz"))) == 1  # the stale file is gone


def test_a_corrupt_cache_is_rebuilt(source: Path) -> None:
    calls: list[int] = []
    _load(source, calls)
    (cached,) = (source.parent / "cache").glob("test-*.json.gz")
    cached.write_bytes(b"not gzip")
    assert _load(source, calls) == {"lines": ["A00 Cholera"]}
    assert len(calls) == 2


def test_an_unwritable_cache_folder_only_warns(source: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    blocker = source.parent / "blocker"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv(CACHE_DIR_ENV, str(blocker / "cache"))
    calls: list[int] = []
    assert _load(source, calls) == {"lines": ["A00 Cholera"]}
    assert "cannot write cache" in caplog.text


def test_an_unwritable_cache_folder_warns_once(source: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    blocker = source.parent / "blocker"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv(CACHE_DIR_ENV, str(blocker / "cache"))
    for salt in ("v1", "v2"):  # two caches, the same folder
        assert _load(source, [], salt=salt) == {"lines": ["A00 Cholera"]}
    assert caplog.text.count("cannot write cache") == 1


def test_the_cache_folder_is_the_users_unless_the_environment_names_one(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    assert cache_dir() == Path(platformdirs.user_cache_dir("coder"))
    assert Path(coder.__file__).parent.parent not in cache_dir().parents  # never inside the installed package
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_building_is_announced_as_a_one_time_preparation(source: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="coder.io.progress")
    _load(source, [])
    assert "preparing the test tables from 1 source files (one time, about 10 s)" in caplog.text
