"""PLM-ICD on a GPU: notes/s by batch size per onnxruntime provider, GPU utilisation, and the
fp16 model's agreement with CPU fp32 (logits and dev MAP).

One command on a machine with an NVIDIA GPU (the fp32/fp16 ONNX files are git-ignored, so export
writes them first and records their hashes):

    coder export models/codiesp-minilm --dev-notes data/codiesp/dev/notes.parquet \\
        --dev-codes data/codiesp/dev/codes.parquet && python benchmarks/gpu.py

Options: --model, --notes N (synthesised by cycling the 200 CodiEsp background notes in
benchmarks/data, default 20,000), --batch-sizes (notes per forward pass, default 16,64,256),
--tensorrt (also try TensorRT), --end-to-end-notes N (default 1,000). Forward passes use I/O binding
(``onnx_runtime.onnx_forward``). The model rows time PLM-ICD alone (tokenising apart, on CPU); then
`coder predict` (the shipped default model, device auto) codes the first N of the notes end to end,
in one process and with one worker process per two cores, against #33's GPU goal: end to end at
least half the GPU model's best notes/s, the candidate stack on the CPU cores. GPU
utilisation is nvidia-smi's, sampled every 100 ms during each timed run. Without an NVIDIA GPU the
script says so and exits with status 1, writing nothing. The run is added to this script's section of
benchmarks/RESULTS.md (history kept).
CodiEsp (CLEF eHealth 2020, Miranda-Escalada et al.): CC BY 4.0.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl

from coder.cpus import physical_cores
from coder.model.folder import ONNX_FILES, load_tokenizer, read_config
from coder.model.chunking import chunk_notes, score_in_batches
from coder.export.onnx import dev_maps
from coder.io.corpus import Corpus
from coder.model.session import CPU_PROVIDER, GPU_PROVIDERS, create_session, gpu_present, onnx_forward

from results import add_run  # benchmarks/results.py: scripts run from this folder
from throughput import run_predict

ROOT = Path(__file__).resolve().parent.parent
NOTES = ROOT / "benchmarks" / "data" / "background_200.parquet"
DEV = ROOT / "data" / "codiesp" / "dev"
MAP_TOLERANCE = 0.005  # issue goal: fp16 on GPU within this of CPU fp32, per system
END_TO_END_GOAL = 0.5  # #33: `coder predict` end to end at least this share of the GPU model alone


class Utilisation:
    """nvidia-smi sampling GPU utilisation (%) in the background while a block runs."""

    def __enter__(self) -> Utilisation:
        self._process = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-lms", "100"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        return self

    def __exit__(self, *exc) -> None:
        self._process.terminate()
        out, _ = self._process.communicate()
        samples = [[float(v) for v in line.split(",")[:2]] for line in out.splitlines() if line.count(",") >= 1]
        self.mean_util = float(np.mean([s[0] for s in samples])) if samples else float("nan")
        self.max_mem_mib = float(max((s[1] for s in samples), default=float("nan")))


def _gpu_name() -> str:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, check=False).stdout.strip()
    return out or "unknown GPU"


def _time(forward, chunks, *, n_labels: int, batch_size: int, pad_id: int) -> tuple[float, Utilisation]:
    score_in_batches(forward, chunks[: batch_size * 2], n_labels=n_labels, batch_size=batch_size, pad_id=pad_id)  # warm-up
    with Utilisation() as util:
        start = time.perf_counter()
        score_in_batches(forward, chunks, n_labels=n_labels, batch_size=batch_size, pad_id=pad_id)
        seconds = time.perf_counter() - start
    return seconds, util


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "codiesp-minilm")
    parser.add_argument("--notes", type=int, default=20_000)
    parser.add_argument("--batch-sizes", default="16,64,256")
    parser.add_argument("--tensorrt", action="store_true",
                        help="Also try TensorRT (needs its libraries; builds an engine per new input shape: slow start).")
    parser.add_argument("--end-to-end-notes", type=int, default=1_000,
                        help="Notes `coder predict` codes end to end (the first of --notes); 0 skips it.")
    args = parser.parse_args()
    if not gpu_present():
        sys.exit("no NVIDIA driver (libcuda.so.1) on this machine: run this benchmark where a GPU is")
    config, tokenizer = read_config(args.model), load_tokenizer(args.model)
    files = {p: args.model / ONNX_FILES[p] for p in ("fp32", "fp16")}
    if missing := [str(f) for f in files.values() if not f.is_file()]:
        sys.exit(f"missing {', '.join(missing)}: run the `coder export` line in this script's docstring first")

    source = pl.read_parquet(NOTES)["text"].to_list()
    texts = [source[i % len(source)] for i in range(args.notes)]
    start = time.perf_counter()
    chunks = chunk_notes(texts, tokenizer=tokenizer, chunk_len=config.chunk_len, max_chunks=config.max_chunks)
    chunking_s = time.perf_counter() - start
    n_chunks = sum(c.n_chunks for c in chunks)
    kwargs = {"n_labels": len(config.labels), "pad_id": tokenizer.pad_token_id}

    rows = []
    for precision in ("fp16", "fp32"):
        for provider in [p for p in GPU_PROVIDERS if args.tensorrt or p != "TensorrtExecutionProvider"]:
            session = create_session(files[precision], providers=[provider, CPU_PROVIDER])
            used = session.get_providers()[0]
            if used == CPU_PROVIDER:
                print(f"{provider} not usable here for {precision} (fell back to CPU): skipped", file=sys.stderr)
                continue
            forward = onnx_forward(session)
            for size in (int(s) for s in args.batch_sizes.split(",")):
                seconds, util = _time(forward, chunks, batch_size=size, **kwargs)
                rows.append((precision, used, size, seconds, util))
                print(rows[-1][:4], f"util {util.mean_util:.0f}%", file=sys.stderr, flush=True)

    if not rows:
        sys.exit("no GPU provider could run here (CUDA libraries missing?): "
                 "pip install 'onnxruntime-gpu[cuda,cudnn]==1.31.1' and rerun")
    cpu32 = onnx_forward(create_session(files["fp32"], device="cpu"))
    gpu16 = onnx_forward(create_session(files["fp16"], providers=["CUDAExecutionProvider", CPU_PROVIDER]))
    probe = chunks[:64]
    diff = float(np.max(np.abs(score_in_batches(cpu32, probe, batch_size=16, **kwargs)[0]
                               - score_in_batches(gpu16, probe, batch_size=16, **kwargs)[0])))
    dev = Corpus.read(DEV / "notes.parquet", DEV / "codes.parquet", text_columns=[config.text_columns["encoder"]])
    maps = dev_maps(args.model, config, {"CPU fp32": cpu32, "GPU fp16": gpu16}, dev=dev, batch_size=16)
    predicts = end_to_end(texts[: args.end_to_end_notes]) if args.end_to_end_notes else []
    section = _section(rows, maps=maps, diff=diff, notes=len(chunks), n_chunks=n_chunks, chunking_s=chunking_s,
                       command=shlex.join(["python", "benchmarks/gpu.py", *sys.argv[1:]]))
    section += _end_to_end_section(predicts, rows=rows, notes=len(chunks))
    add_run("gpu", title="## PLM-ICD on a GPU (benchmarks/gpu.py)", section=section)
    print(section)


def end_to_end(texts: list[str]) -> list[dict[str, float]]:
    """`coder predict` of ``texts`` (as note ids n0, n1, ...) in one process, then with one worker process
    per two cores (each with its own model on the GPU and two cores for its CPU stages). A first run on
    eight of them builds the caches the others read (the dense search's encoder and term vectors)."""
    with tempfile.TemporaryDirectory() as folder:
        notes, warm = Path(folder) / "notes.parquet", Path(folder) / "warm.parquet"
        frame = pl.DataFrame({"note_id": [f"n{i}" for i in range(len(texts))], "text": texts})
        frame.write_parquet(notes)
        frame.head(8).write_parquet(warm)
        run_predict(warm)
        return [run_predict(notes, workers=n) for n in sorted({1, max(1, physical_cores() // 2)})]


def _end_to_end_section(predicts: list[dict[str, float]], *, rows, notes: int) -> str:
    """The end-to-end rows, each against the GPU model's best notes/s and #33's goal."""
    if not predicts:
        return ""
    on_gpu = [(size, notes / seconds) for _, provider, size, seconds, _ in rows if provider != CPU_PROVIDER]
    model = max(rate for _, rate in on_gpu)
    one = max((rate for size, rate in on_gpu if size == 1), default=None)  # as `coder predict` passes notes
    lines = [
        f"`coder predict` end to end on the first {predicts[0]['notes']} notes (shipped default model, device auto); "
        f"the GPU model alone at its best: {model:.0f} notes/s; goal: end to end at least {END_TO_END_GOAL:.0%} of it. "
        + (f"One note a pass, as `coder predict` scores them: {one:.0f} notes/s." if one else
           "`coder predict` scores one note a pass (its scores then never depend on the notes beside it): "
           "`--batch-sizes 1,...` times the model so too."),
        "",
        "| workers | provider | precision | notes/s | share of the GPU model | seconds by stage (summed over workers) |",
        "|---:|---|---|---:|---:|---|",
    ]
    for r in predicts:
        stages = ", ".join(f"{stage} {value:.1f}" for stage, value in r["stage_seconds"].items())
        lines.append(f"| {r['workers']} | {r['provider']} | {r['precision']} | {r['notes_per_s']:.1f} | "
                     f"{r['notes_per_s'] / model:.1%} | {stages} |")
    return "\n" + "\n".join([*lines, ""])


def _section(rows, *, maps, diff, notes, n_chunks, chunking_s, command) -> str:
    drop = {s: maps["CPU fp32"][s] - maps["GPU fp16"][s] for s in maps["CPU fp32"]}
    lines = [
        f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"`{command}` on {_gpu_name()}, {platform.machine()} with {os.cpu_count()} CPUs.",
        "",
        f"{notes} notes ({n_chunks} chunks, {n_chunks / notes:.2f} per note); tokenising + chunking on CPU: "
        f"{chunking_s:.1f} s ({notes / chunking_s:.0f} notes/s, not included below).",
        "",
        "| precision | provider used | notes per pass | notes/s | chunks/s | mean GPU util | max GPU memory (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for precision, provider, size, seconds, util in rows:
        lines.append(f"| {precision} | {provider} | {size} | {notes / seconds:.0f} | {n_chunks / seconds:.0f} | "
                     f"{util.mean_util:.0f}% | {util.max_mem_mib:.0f} |")
    lines += [
        "",
        f"GPU fp16 against CPU fp32: max abs difference of sigmoid scores on 64 notes {diff:.2e}; dev MAP "
        f"CPU fp32 {maps['CPU fp32']}, GPU fp16 {maps['GPU fp16']}; drop "
        + ", ".join(f"{s} {d:+.4f}" for s, d in drop.items())
        + f" ({'within' if all(abs(d) <= MAP_TOLERANCE for d in drop.values()) else 'NOT within'} {MAP_TOLERANCE}).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
