"""PLM-ICD scoring throughput: torch eager vs onnxruntime fp32 vs onnxruntime int8, same 200 notes.

    python benchmarks/throughput.py [--model models/codiesp-minilm] [--notes benchmarks/data/background_200.parquet]

Each mode runs in its own fresh process (so its peak RSS is its own), scores the same notes in
length-bucketed batches, and is timed after one warm-up batch; chunking is timed once apart.
The run is appended to this script's section of benchmarks/RESULTS.md (history kept).
CodiEsp background notes: CLEF eHealth 2020, Miranda-Escalada et al., CC BY 4.0.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
NOTES = ROOT / "benchmarks" / "data" / "background_200.parquet"
SHARED_BACKGROUND = Path("/work/shared/data/codiesp/background/notes.parquet")
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- throughput: begin -->", "<!-- throughput: end -->"
MODES = ("torch eager fp32", "onnxruntime fp32", "onnxruntime int8")


def _ensure_notes(path: Path) -> None:
    """Copy 200 background notes next to the benchmark so it runs from a clone."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.read_parquet(SHARED_BACKGROUND, columns=["note_id", "text"]).head(200).write_parquet(path)


def _run_mode(mode: str, model: Path, notes_path: Path, batch_size: int) -> dict[str, float]:
    """Score every note with one backend in this (fresh) process."""
    from coder.bundle import ONNX_FILES, load_tokenizer, read_config
    from coder.chunking import chunk_notes, score_in_batches
    from coder.onnx_runtime import create_session, onnx_forward
    from coder.plm_icd import load_torch, torch_forward

    config = read_config(model)
    tokenizer = load_tokenizer(model)
    texts = pl.read_parquet(notes_path)["text"].to_list()
    start = time.perf_counter()
    chunks = chunk_notes(texts, tokenizer=tokenizer, chunk_len=config.chunk_len, max_chunks=config.max_chunks)
    chunking_s = time.perf_counter() - start
    if mode.startswith("torch"):
        forward = torch_forward(load_torch(model, config))
    else:
        forward = onnx_forward(create_session(model / ONNX_FILES[mode.split()[-1]], device="cpu"))
    kwargs = {"n_labels": len(config.labels), "batch_size": batch_size, "pad_id": tokenizer.pad_token_id}
    score_in_batches(forward, chunks[:batch_size], **kwargs)  # warm-up
    start = time.perf_counter()
    score_in_batches(forward, chunks, **kwargs)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "chunking_s": chunking_s,
        "notes": len(chunks),
        "chunks": sum(c.n_chunks for c in chunks),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return f"{platform.machine()} ({cpu}, {os.cpu_count()} CPUs)"


def _section(rows: list[tuple[str, dict[str, float]]], *, command: str, note: str) -> str:
    base = rows[0][1]["seconds"]
    lines = [
        f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"`{command}` on {_machine()}; load average at start {os.getloadavg()[0]:.1f}. {note}",
        "",
        "| mode | notes/s | chunks/s | speed-up vs torch | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode, r in rows:
        lines.append(
            f"| {mode} | {r['notes'] / r['seconds']:.2f} | {r['chunks'] / r['seconds']:.1f} | "
            f"{base / r['seconds']:.2f}× | {r['peak_rss_mb']:.0f} |"
        )
    first = rows[0][1]
    lines.append("")
    lines.append(f"{first['notes']} notes, {first['chunks']} chunks; tokenising + chunking all notes: {first['chunking_s']:.2f} s.")
    return "\n".join(lines) + "\n"


def _write(section: str) -> None:
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    if BEGIN not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n## PLM-ICD scoring throughput (benchmarks/throughput.py)\n{END}\n"
    head, tail = text.split(END, 1)
    RESULTS.write_text(head.rstrip("\n") + "\n\n" + section + END + tail, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "codiesp-minilm")
    parser.add_argument("--notes", type=Path, default=NOTES)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--note", default="", help="Free text recorded with the run (e.g. other load on the machine).")
    args = parser.parse_args()
    _ensure_notes(args.notes)
    rows = []
    for mode in MODES:
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            result = pool.submit(_run_mode, mode, args.model, args.notes, args.batch_size).result()
        print(f"{mode}: {result}", file=sys.stderr)
        rows.append((mode, result))
    section = _section(rows, command=shlex.join(["python", "benchmarks/throughput.py", *sys.argv[1:]]), note=args.note)
    _write(section)
    print(section)


if __name__ == "__main__":
    main()
