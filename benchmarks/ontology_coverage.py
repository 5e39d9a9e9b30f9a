"""How much of CodiEsp's gold the ontology knows, and how fast it loads.

Validates every train+dev gold row (data/codiesp/*/codes.parquet) in its own system, checks that
made-up codes come back unknown, times a cold cache build and a warm load in fresh processes,
prints the tables and writes them into this benchmark's section of benchmarks/RESULTS.md.

    python benchmarks/ontology_coverage.py [--skip-load-times]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import polars as pl

from coder.ontology import load_ontology
from coder.ontology.cache import CACHE_DIR_ENV
from coder.schema import CODE, SYSTEM, SYSTEMS

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "dev")
STATUSES = ("billable", "valid", "prefix", "unknown")
MADE_UP = ("ZZZ.999", "E11.99X9", "0ZZZZZZ", "ABC")
BEGIN, END = "<!-- ontology_coverage: begin -->", "<!-- ontology_coverage: end -->"
_TIMER = (
    "import json, time; t = time.perf_counter(); from coder.ontology import load_ontology; "
    "load_ontology(); print(json.dumps(time.perf_counter() - t))"
)


def coverage(data: Path) -> str:
    """Markdown table of rows by system x status over the train+dev gold."""
    ontology = load_ontology()
    gold = pl.concat([pl.read_parquet(data / split / "codes.parquet") for split in SPLITS])
    counts: Counter[tuple[str, str]] = Counter()
    unknown: Counter[str] = Counter()
    for code, system in gold.select(CODE, SYSTEM).iter_rows():
        info = ontology.lookup(code, system)
        counts[(system, info.status)] += 1
        if info.status == "unknown":
            unknown[code] += 1
    lines = ["| system | status | rows | % of system |", "|---|---|---:|---:|"]
    for system in SYSTEMS:
        total = sum(counts[(system, status)] for status in STATUSES)
        lines += [f"| {system} | {status} | {counts[(system, status)]:,} | {100 * counts[(system, status)] / total:.1f} |"
                  for status in STATUSES]
        lines.append(_known_row(system, total - counts[(system, "unknown")], total))
    lines.append(_known_row("both", gold.height - unknown.total(), gold.height))
    listed = ", ".join(f"`{code}` ×{n}" for code, n in unknown.most_common())
    return "\n".join(lines) + f"\n\nUnknown gold codes (release drift since 2018; a --codes-file makes them known): {listed}"


def _known_row(system: str, known: int, total: int) -> str:
    return f"| {system} | **known (billable+valid+prefix)** | {known:,} of {total:,} | **{100 * known / total:.1f}** |"


def made_up() -> str:
    ontology = load_ontology()
    results = [f"`{code}` → {ontology.lookup(code).status}" for code in MADE_UP]
    return "Made-up codes (system inferred): " + ", ".join(results)


def load_times() -> str:
    """Seconds from import to a ready ontology, in fresh processes: cold (empty cache) then warm."""
    with tempfile.TemporaryDirectory() as cache:
        environment = {**os.environ, CACHE_DIR_ENV: cache}
        seconds = [
            json.loads(subprocess.run([sys.executable, "-c", _TIMER], env=environment, check=True,
                                      capture_output=True, text=True, cwd=ROOT).stdout)
            for _ in range(3)
        ]
    return (f"Load time (import + `load_ontology()` in a fresh process): cold build {seconds[0]:.2f} s; "
            f"warm {seconds[1]:.2f} s and {seconds[2]:.2f} s.")


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else ():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def write_section(results: Path, body: str) -> None:
    """Replace this benchmark's section of ``results`` (or append it), leaving others' sections alone."""
    section = f"{BEGIN}\n{body}\n{END}"
    text = results.read_text(encoding="utf-8") if results.exists() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    results.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "codiesp", help="CodiEsp folder with train/ and dev/.")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md", help="Markdown file to update.")
    parser.add_argument("--skip-load-times", action="store_true", help="Do not time cold and warm loads.")
    args = parser.parse_args()
    command = "python benchmarks/ontology_coverage.py" + (" --skip-load-times" if args.skip_load_times else "")
    ontology = load_ontology()
    parts = [
        "## Ontology coverage of CodiEsp gold codes",
        f"`{command}` on {platform.machine()} ({_cpu()}, {os.cpu_count()} CPUs), "
        f"{datetime.date.today().isoformat()}. Releases: {ontology.release[SYSTEMS[0]]}; {ontology.release[SYSTEMS[1]]}; "
        "no user code list. Train+dev gold rows, each looked up in its own system.",
        "",
        coverage(args.data),
        "",
        made_up(),
    ]
    if not args.skip_load_times:
        parts += ["", load_times()]
    body = "\n".join(parts)
    print(body)
    write_section(args.results, body)


if __name__ == "__main__":
    main()
