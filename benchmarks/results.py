"""benchmarks/RESULTS.md: each benchmark owns a section between ``<!-- NAME: begin -->`` and
``<!-- NAME: end -->``; a new run goes at its end, so earlier runs stay as history."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def add_run(name: str, *, title: str, section: str, path: Path = RESULTS) -> None:
    """Append ``section`` to benchmark ``name``'s section of ``path`` (created with ``title`` if absent)."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    if begin not in text:
        text = text.rstrip("\n") + f"\n\n{begin}\n{title}\n{end}\n"
    head, tail = text.split(end, 1)
    path.write_text(head.rstrip("\n") + "\n\n" + section + end + tail, encoding="utf-8")
