"""A content-keyed cache of built tables: one gzipped JSON file per set of source files.

The key is the sha256 of the source files' contents plus a ``salt`` (builder version, package
versions), so the cache is rebuilt whenever a source or the builder changes, and never trusted
otherwise. JSON, not pickle: loading a cache file cannot run code.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import platformdirs

from coder.errors import OntologyError
from coder.hashing import file_sha256
from coder.io.atomic import write_atomically
from coder.io.progress import announce

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "CODER_CACHE_DIR"
# Folders already found unwritable in this process: each is warned about once.
_UNWRITABLE: set[Path] = set()


def cache_dir() -> Path:
    """Where cache files live: ``$CODER_CACHE_DIR``, else the user's cache folder
    (``platformdirs.user_cache_dir("coder")``, e.g. ``~/.cache/coder``), never the installed package."""
    return Path(os.environ.get(CACHE_DIR_ENV) or platformdirs.user_cache_dir("coder"))


def cache_key(*, sources: Sequence[Path], salt: str) -> str:
    """sha256 over the salt and each source's sha256."""
    digest = hashlib.sha256(salt.encode())
    for source in sources:
        try:
            digest.update(file_sha256(source).encode())
        except OSError as error:
            raise OntologyError(f"cannot read ontology source {source}: {error.strerror}") from error
    return digest.hexdigest()


def load_or_build(
    *, name: str, sources: Sequence[Path], salt: str, build: Callable[[], dict[str, Any]], about_s: float = 10.0
) -> dict[str, Any]:
    """The tables built from ``sources``: read from the cache when its key matches, else built
    with ``build()`` (announced as a one-time preparation of about ``about_s`` seconds) and written
    atomically. An unwritable cache folder only costs a warning."""
    key = cache_key(sources=sources, salt=salt)
    path = cache_dir() / f"{name}-{key[:16]}.json.gz"
    if path.is_file():
        try:
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                cached = json.load(handle)
            if cached.get("key") == key:
                return cached["tables"]
            logger.warning("cache %s has another key; rebuilding", path)
        except (OSError, ValueError, EOFError) as error:
            logger.warning("cache %s is unreadable (%s); rebuilding", path, error)
    announce(f"the {name} tables from {len(sources)} source files", seconds=about_s)
    tables = build()

    def write(raw: IO[bytes]) -> None:
        with gzip.open(raw, "wt", encoding="utf-8", compresslevel=6) as handle:
            json.dump({"key": key, "tables": tables}, handle, separators=(",", ":"))

    # older files of this name were built from older sources or an older builder
    write_cache(path, write, what="cache", stale=f"{name}-*.json.gz")
    return tables


def write_cache(path: Path, write: Callable[[IO[bytes]], None], *, what: str, stale: str | None = None) -> None:
    """Write a cache file atomically (``coder.io.atomic``), then delete the files beside it that
    match the glob ``stale`` (other versions of the same cache). An unwritable cache folder costs one
    warning per process (the caller keeps what it built in memory; it is rebuilt next run)."""
    if path.parent in _UNWRITABLE:
        logger.info("cache folder %s is unwritable: %s %s kept in memory only", path.parent, what, path.name)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, write, durable=False)  # a lost cache file is rebuilt, not data lost
        for old in path.parent.glob(stale) if stale else ():
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as error:
        _UNWRITABLE.add(path.parent)
        logger.warning("cannot write %s %s (%s): the caches are rebuilt on every run until %s names a writable "
                       "folder (or run `coder prepare` where it is writable)", what, path, error, CACHE_DIR_ENV)
