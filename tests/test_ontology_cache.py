"""The content-keyed cache, with a stand-in builder so it runs in milliseconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from coder.ontology.cache import CACHE_DIR_ENV, load_or_build


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
