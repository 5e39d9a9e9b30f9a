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
