"""`coder predict --engine ray` against `--engine local` on the same dump: wall time, and identical output.

Notes are synthesised as in benchmarks/memory.py (CodiEsp notes cycled with fresh ids) into a
work folder outside git. Each engine runs as its own `coder predict` process, so the Ray figure
includes starting a local Ray and each actor's model load. Run with ``nice``:

    nice /work/venv/bin/python benchmarks/ray_engine.py --model tests/assets/tiny_model/bundle --notes 2000

Prints a markdown table and adds the run to this script's section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import CODER, synthesise  # noqa: E402  (the sibling benchmark's dump and command)
from results import add_run  # noqa: E402


def run(engine: str, *, notes: Path, model: Path, work: Path, batch_size: int) -> tuple[float, Path]:
    out = work / f"{engine}.parquet"
    command = [*CODER, "predict", str(notes), "--out", str(out), "--model", str(model), "--engine", engine,
               "--batch-size", str(batch_size), "--quiet"]
    start = time.monotonic()
    subprocess.run(command, check=True)
    return time.monotonic() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="Model folder.")
    parser.add_argument("--notes", type=int, default=2000, help="Notes in the synthetic dump.")
    parser.add_argument("--batch-size", type=int, default=64, help="--batch-size of both runs.")
    parser.add_argument("--work", type=Path, default=Path("/tmp/coder-bench"), help="Work folder (outside git).")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    notes = synthesise(args.notes, args.work / f"notes-{args.notes}.parquet")
    rows = ["| engine | notes | wall s | notes/s | model s (summed) | engine section |", "|---|---|---|---|---|---|"]
    outputs = {}
    for engine in ("local", "ray"):
        seconds, out = run(engine, notes=notes, model=args.model, work=args.work, batch_size=args.batch_size)
        manifest = json.loads(out.with_name(f"{out.stem}.manifest.json").read_text())
        outputs[engine] = out
        rows.append(
            f"| {engine} | {args.notes} | {seconds:.1f} | {args.notes / seconds:.1f} | "
            f"{manifest['timing']['model_seconds']:.1f} | {json.dumps(manifest['engine'])} |"
        )
    local, ray = (pl.read_parquet(outputs[e]) for e in ("local", "ray"))
    assert_frame_equal(ray, local, check_exact=False, abs_tol=1e-6, rel_tol=0)
    command = shlex.join(["python", "benchmarks/ray_engine.py", *sys.argv[1:]])
    section = "\n".join([
        f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"`{command}` on {platform.machine()} ({os.cpu_count()} CPUs); load average {os.getloadavg()[0]:.1f} at the end.",
        "", *rows, "", f"Identical output: {local.height} prediction rows (scores within 1e-6).", ""])
    add_run("ray-engine", title="## `coder predict --engine ray` against `--engine local` (benchmarks/ray_engine.py)", section=section)
    print(section)


if __name__ == "__main__":
    main()
