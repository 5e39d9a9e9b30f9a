"""The run manifest: a JSON record beside the output of what was read, with which model, and what came out.

Written by ``coder.run.run_batches`` with the atomic writer (``coder.io.atomic.write_json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def manifest_path(out: Path) -> Path:
    """``OUT.parquet`` -> ``OUT.manifest.json``."""
    return out.with_name(f"{out.stem}.manifest.json")


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest at ``path``, or None if there is none."""
    return json.loads(path.read_text()) if path.is_file() else None
