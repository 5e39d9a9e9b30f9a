"""Peak memory of `coder predict` against dump size, with one huge note beside normal ones, and pipeline
overhead against the model alone.

Notes are synthesised from the 200 CodiEsp background notes in the repository
(benchmarks/data/background_200.parquet, English ``text`` only, CC BY 4.0), cycled with fresh
note ids, into a work folder outside git (default /tmp/coder-bench). Each `coder predict` runs as
its own process; its peak RSS comes from ``os.wait4`` (the kernel's max resident set of that
process). The long-note case is two background notes and one note of ``--long-note-chars`` characters
(background text repeated, 5,000,000 by default: a 5 MB note), coded with the default ``--max-note-chars``;
0 skips it. Run with ``nice``: it keeps the CPU busy for minutes.

    nice -n 19 /work/venv/bin/python benchmarks/memory.py --model tests/assets/tiny_model/bundle \
        --sizes 1000,10000,100000 --overhead-notes 2000
    nice -n 19 /work/venv/bin/python benchmarks/memory.py --model models/codiesp-minilm --sizes 200,1000 \
        --overhead-notes 0 --long-note-chars 5000000

The `coder` console script imports the package from this checkout; put another checkout first on
PYTHONPATH to measure it with the same harness (e.g. a `git worktree` of an older commit).

Prints a markdown table and appends the run to this script's section of benchmarks/RESULTS.md.
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
import pyarrow.parquet as pq

from results import add_run  # benchmarks/results.py: scripts run from this folder

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "benchmarks" / "data" / "background_200.parquet"
CODER = [str(Path(sys.executable).with_name("coder"))]  # the installed console script


def synthesise(n: int, path: Path, *, chars: int | None = None, chunk: int = 10_000) -> Path:
    """``n`` notes cycled from the background notes (cut to ``chars`` characters if given), written in row groups."""
    if path.exists() and pq.ParquetFile(path).metadata.num_rows == n:
        return path
    source = pl.read_parquet(SOURCE, columns=["text"])
    if chars:
        source = source.with_columns(pl.col("text").str.slice(0, chars))
    tmp = path.with_suffix(".tmp")
    writer = None
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        rows = pl.int_range(start, start + size, eager=True)
        frame = source[(rows % source.height).to_list()].with_columns(
            pl.format("syn{}", rows.cast(pl.String).str.zfill(7)).alias("note_id")
        ).select("note_id", "text")
        table = frame.to_arrow()
        writer = writer or pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()
    tmp.replace(path)
    return path


def synthesise_long(path: Path, *, chars: int) -> Path:
    """Two background notes and one note of ``chars`` characters (the background notes' text, repeated)."""
    source = pl.read_parquet(SOURCE, columns=["text"]).get_column("text")
    text = "\n".join(source.to_list())
    long = (text * (chars // len(text) + 1))[:chars]
    pl.DataFrame({"note_id": ["normal-1", "long", "normal-2"], "text": [source[0], long, source[1]]}).write_parquet(path)
    return path


def cpu_model() -> str:
    """What ``lscpu`` calls the Model name."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown CPU"


def run_predict(notes: Path, out: Path, *, model: Path, batch_size: int) -> dict:
    """Run `coder predict` in its own process; return wall seconds, peak RSS (MiB), the manifest and
    the 1-minute load average at the end."""
    command = [*CODER, "predict", str(notes), "--out", str(out), "--model", str(model),
               "--batch-size", str(batch_size), "--device", "cpu", "--quiet"]
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - start
    stderr = process.stderr.read().decode() if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"coder predict failed on {notes}: {stderr[-2000:]}")
    manifest = json.loads(out.with_name(f"{out.stem}.manifest.json").read_text())
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, "manifest": manifest, "load": os.getloadavg()[0]}


def model_only(notes: Path, *, model: Path, batch_size: int) -> float:
    """Notes/s of the pipeline's stages alone (``coder.pipeline.code_batch``), fed the batches the run reads."""
    from coder.assembly import load_model
    from coder.pipeline import code_batch

    loaded = load_model(model, device="cpu")
    columns = ["note_id", *(c for c in loaded.text_columns if c in pq.ParquetFile(notes).schema_arrow.names)]
    total = 0
    seconds = 0.0
    for batch in pq.ParquetFile(notes).iter_batches(batch_size=batch_size, columns=columns):
        frame = pl.from_arrow(batch)
        tick = time.monotonic()
        code_batch(loaded, frame, top_k=50)
        seconds += time.monotonic() - tick
        total += frame.height
    return total / seconds


def table_row(notes: str, run: dict) -> str:
    """The table's row of one `coder predict` run (``run_predict``), its notes column saying ``notes``."""
    timing, counts = run["manifest"]["timing"], run["manifest"]["counts"]
    return (f"| {notes} | {run['seconds']:.1f} | {timing['notes_per_s']:.1f} | {run['peak_rss_mib']:.0f} "
            f"| {counts['codes_written']:,} | {run['load']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "tests" / "assets" / "tiny_model" / "bundle")
    parser.add_argument("--sizes", default="1000,10000,100000", help="dump sizes for the memory curve")
    parser.add_argument("--overhead-notes", type=int, default=2000, help="notes for end-to-end vs model-only (0 skips)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/coder-bench"))
    parser.add_argument("--chars", type=int, default=None,
                        help="cut the memory-curve notes to this many characters (faster on a busy machine)")
    parser.add_argument("--long-note-chars", type=int, default=5_000_000,
                        help="characters of the one huge note coded beside two normal ones (0 skips the case)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    lines = [
        f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"`{shlex.join(['python', 'benchmarks/memory.py', *sys.argv[1:]])}` on {cpu_model()} ({os.cpu_count()} CPUs): "
        f"model {args.model}, batch size {args.batch_size}, "
        f"notes {'cut to ' + str(args.chars) + ' characters' if args.chars else 'at full length'}, "
        f"load average at start {os.getloadavg()[0]:.1f}.",
        "",
        "| notes | wall s | pipeline notes/s | peak RSS MiB | codes written | load average at end |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for n in (int(s) for s in args.sizes.split(",")):
        notes = synthesise(n, args.workdir / f"background-{n}-{args.chars or 'full'}.parquet", chars=args.chars)
        run = run_predict(notes, args.workdir / f"pred-{n}.parquet", model=args.model, batch_size=args.batch_size)
        lines.append(table_row(f"{n:,}", run))
        print(lines[-1], flush=True)
    if args.long_note_chars:
        notes = synthesise_long(args.workdir / f"long-{args.long_note_chars}.parquet", chars=args.long_note_chars)
        run = run_predict(notes, args.workdir / "pred-long.parquet", model=args.model, batch_size=args.batch_size)
        manifest = run["manifest"]
        lines.append(table_row(f"2 + one of {args.long_note_chars:,} characters ({manifest['counts'].get('over_max_note_chars', '?')} "
                               f"cut at {manifest['options'].get('max_note_chars', 'no limit')})", run))
        print(lines[-1], flush=True)

    if args.overhead_notes:
        notes = synthesise(args.overhead_notes, args.workdir / f"background-{args.overhead_notes}-full.parquet")
        alone = model_only(notes, model=args.model, batch_size=args.batch_size)
        run = run_predict(notes, args.workdir / "pred-overhead.parquet", model=args.model, batch_size=args.batch_size)
        end_to_end = run["manifest"]["timing"]["notes_per_s"]
        lines += ["", f"Overhead on {args.overhead_notes:,} notes: model alone {alone:.2f} notes/s, "
                      f"end to end {end_to_end:.2f} notes/s ({end_to_end / alone:.0%} of model-only; "
                      f"excludes process start and model load: {run['seconds']:.1f} s wall in all)."]
        print(lines[-1])
    add_run("memory", title="## `coder predict`: peak memory against dump size (benchmarks/memory.py)",
            section="\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
