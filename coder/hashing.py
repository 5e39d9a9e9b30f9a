"""The one file-hashing helper: inputs in the manifest, ontology cache keys, model files."""

from __future__ import annotations

import hashlib
from pathlib import Path

_BLOCK = 1 << 20  # read 1 MiB at a time so large dumps hash in flat memory


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def folder_sha256(folder: Path) -> str:
    """Hex sha256 over every file under ``folder``: its path relative to the folder and its sha256."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()
