"""`coder predict` of this checkout against another commit, in one run: same notes, same machine, same venv.

    python benchmarks/compare_commits.py --base REF [--notes data/codiesp/dev/notes.parquet] [--rounds 2] [--gold CODES]
        [--note TEXT]

The other commit is checked out in a temporary git worktree and run with this virtual environment
(its package first on PYTHONPATH), each with its own default model, in rounds A, B, then B, A, so that
load on the machine and the place in a round fall on both. Reports each side's end-to-end notes/s (the
manifest's, load excluded) and their ratio round by round, and compares their predictions on (note, system, code): rows only
one side wrote, score differences, rank changes and whether they stay inside groups of equal scores, and the other
columns; with ``--gold``, each side's MAP per system (``coder audit`` of this checkout on both sides' first
predictions). Appends the run to this script's section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from results import add_run, code_version  # benchmarks/results.py: scripts run from this folder

ROOT = Path(__file__).resolve().parent.parent
KEY = ["note_id", "system", "code"]
COLUMNS = ("description", "above_threshold", "source", "evidence_text", "evidence_start", "evidence_end")


CACHE = Path(os.environ.get("CODER_CACHE_DIR") or ROOT / "ontologies" / "cache")  # shared: built once, not timed


def predict(checkout: Path, notes: Path, out: Path) -> float:
    """`coder predict` of ``checkout`` on ``notes``; returns the manifest's notes/s."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "CODER_CACHE_DIR": str(CACHE)}
    command = [sys.executable, "-m", "cli", "predict", str(notes), "--out", str(out), "--quiet"]
    subprocess.run(command, cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.with_name(f"{out.stem}.manifest.json").read_text())["timing"]["notes_per_s"]


def audit_map(predictions: Path, gold: Path) -> dict[str, float]:
    """MAP per system of ``predictions`` against ``gold`` (`coder audit --json` of this checkout)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CODER_CACHE_DIR": str(CACHE)}
    command = [sys.executable, "-m", "cli", "audit", str(predictions), "--gold", str(gold), "--json"]
    found = json.loads(subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout)
    return {system: result["map"] for system, result in found.items() if isinstance(result, dict) and "map" in result}


def compare(base: pl.DataFrame, head: pl.DataFrame) -> list[str]:
    """What differs between two predictions files, as lines."""
    only_base, only_head = base.join(head, on=KEY, how="anti"), head.join(base, on=KEY, how="anti")
    both = base.join(head, on=KEY, suffix="_head")
    moved = both.filter(pl.col("rank") != pl.col("rank_head"))
    ties = base.group_by("note_id", "system", "score").len().filter(pl.col("len") > 1)
    in_ties = moved.join(ties, on=["note_id", "system", "score"], how="semi").height
    nearest = (only_base.join(only_head, on=["note_id", "system"], suffix="_head")
               .with_columns((pl.col("score") - pl.col("score_head")).abs().alias("gap"))
               .group_by("note_id", "system", "code").agg(pl.col("gap").min()))
    lines = [
        f"rows: base {base.height:,}, this checkout {head.height:,}; only in base {only_base.height}, only here {only_head.height}"
        + (f" (each within {nearest['gap'].max():.1e} of a score the other side kept at the top-k cut)" if nearest.height else ""),
        f"scores of common rows: max |difference| {(both['score'] - both['score_head']).abs().max():.1e}",
        f"ranks: {moved.height:,} rows moved, {in_ties:,} of them inside a group of equal scores",
    ]
    for column in COLUMNS:
        differing = both.filter(pl.col(column).ne_missing(pl.col(f"{column}_head")))
        if differing.height:
            lines.append(f"{column}: differs in {differing.height:,} rows "
                         f"({differing.filter(pl.col(column).is_null()).height:,} empty in base)")
    return lines


def main() -> None:
    # no abbreviations: ``--note`` and ``--notes`` are both options
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--base", required=True, help="git commit (or branch, tag) to compare this checkout with")
    parser.add_argument("--notes", type=Path, default=ROOT / "data" / "codiesp" / "dev" / "notes.parquet")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs of each side; each round runs both, the base first in every other round")
    parser.add_argument("--gold", type=Path, help="gold codes of the notes: each side's MAP per system")
    parser.add_argument("--note", default="", help="Free text recorded with the run (e.g. other load on the machine).")
    args = parser.parse_args()
    here = code_version()  # at the start: the code this run imports
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        worktree = tmp / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.base], check=True,
                       capture_output=True)
        try:
            sides = {"base": worktree, "this checkout": ROOT}
            rates: dict[str, list[float]] = {name: [] for name in sides}
            for round_ in range(args.rounds):
                # each side first in every other round: a run's position in the pair can cost it speed
                for name, checkout in (sides.items() if round_ % 2 == 0 else reversed(sides.items())):
                    out = tmp / f"{name.replace(' ', '_')}-{round_}.parquet"
                    rates[name].append(predict(checkout, args.notes.resolve(), out))
            firsts = {name: tmp / f"{name.replace(' ', '_')}-0.parquet" for name in sides}
            base, head = (pl.read_parquet(first) for first in firsts.values())
            maps = {name: audit_map(first, args.gold.resolve()) for name, first in firsts.items()} if args.gold else {}
            commit = subprocess.run(["git", "-C", str(worktree), "rev-parse", "--short", "HEAD"], check=True,
                                    capture_output=True, text=True).stdout.strip()
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
    median = {name: statistics.median(values) for name, values in rates.items()}
    # each round's two runs ran minutes apart: their ratio leaves out the machine's drift between rounds
    pairs = [head / base for base, head in zip(rates["base"], rates["this checkout"], strict=True)]
    lines = [
        f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"`{shlex.join(['python', 'benchmarks/compare_commits.py', *sys.argv[1:]])}` on {platform.machine()} "
        f"({os.cpu_count()} CPUs), base {commit}, this checkout {here}; load average {os.getloadavg()[0]:.1f} at the end."
        + (f" {args.note}" if args.note else ""),
        "",
        "| side | notes/s per run (manifest, load excluded) | median |",
        "|---|---|---:|",
        *(f"| {name} | {', '.join(f'{v:.2f}' for v in values)} | {median[name]:.2f} |" for name, values in rates.items()),
        "",
        f"This checkout runs at {median['this checkout'] / median['base']:.2f}x the base (medians); round by round "
        f"{statistics.median(pairs):.2f}x (median of {len(pairs)}, from {min(pairs):.2f}x to {max(pairs):.2f}x, "
        f"ahead in {sum(pair > 1 for pair in pairs)}).",
        "",
        *(f"- {line}" for line in compare(base, head)),
        *(f"- MAP against {args.gold}, {name}: " + ", ".join(f"{system} {value:.4f}" for system, value in found.items())
          for name, found in maps.items()),
        "",
    ]
    section = "\n".join(lines)
    add_run("compare_commits", title="## `coder predict` against another commit (benchmarks/compare_commits.py)", section=section)
    print(section)


if __name__ == "__main__":
    main()
