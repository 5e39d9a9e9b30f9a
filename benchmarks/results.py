"""benchmarks/RESULTS.md: each benchmark owns a section between ``<!-- NAME: begin -->`` and
``<!-- NAME: end -->``; a new run goes at its end, so earlier runs stay as history."""

from __future__ import annotations

import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ROOT = RESULTS.parent.parent


def add_run(name: str, *, title: str, section: str, path: Path = RESULTS) -> None:
    """Append ``section`` to benchmark ``name``'s section of ``path`` (created with ``title`` if absent)."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    if begin not in text:
        text = text.rstrip("\n") + f"\n\n{begin}\n{title}\n{end}\n"
    head, tail = text.split(end, 1)
    path.write_text(head.rstrip("\n") + "\n\n" + section + end + tail, encoding="utf-8")


def code_version() -> str:
    """HEAD's short hash, and whether files under coder/ differ from it: the code a run imports."""
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    changed = subprocess.run([*git, "status", "--porcelain", "coder"], capture_output=True, text=True).stdout.strip()
    return commit + (" with uncommitted changes under coder/" if changed else "")
