"""The run manifest: a JSON record beside the output of what was read, with which model, and what came out."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

def manifest_path(out: Path) -> Path:
    """``OUT.parquet`` -> ``OUT.manifest.json``."""
    return out.with_name(f"{out.stem}.manifest.json")


def write_json(path: Path, content: Mapping[str, Any]) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest at ``path``, or None if there is none."""
    return json.loads(path.read_text()) if path.is_file() else None
