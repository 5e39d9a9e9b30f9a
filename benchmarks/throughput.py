"""PLM-ICD scoring throughput: torch eager vs onnxruntime fp32 vs onnxruntime int8, same 200 notes,
plus end-to-end `coder predict` and where its time goes.

    python benchmarks/throughput.py [--model models/codiesp-minilm] [--notes benchmarks/data/background_200.parquet] [--batch-sizes 1,2,8]

Each mode runs in its own fresh process (so its peak RSS is its own), scores the same notes in
length-bucketed batches, and is timed after one warm-up batch; chunking is timed once apart.
Encoder G(FL)OP/s of each mode is set against this machine's peaks measured in the same run: fp32
(a torch matmul) for fp32 modes, int8 (an onnxruntime MatMulInteger) for int8. `coder predict` (the
shipped default model, no options) runs as a subprocess on these notes (English only: the sources
that read text_es are skipped) and on the CodiEsp dev notes (text_es too: the full model), there
with the int8 and, when exported, the fp32 PLM-ICD, each audited against the dev codes (in-sample for
the rerankers over PLM-ICD's scores, which were fitted on dev: compare the two, not with held-out
figures); one pipeline batch on the dev notes is then split in-process by stage and by candidate
source. The ratios the speed goals are set in close the table.
The run is appended to this script's section of benchmarks/RESULTS.md (history kept).
CodiEsp background notes: CLEF eHealth 2020, Miranda-Escalada et al., CC BY 4.0.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import json
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path

import polars as pl

from coder.model.folder import ONNX_FILES
from coder.schema import SYSTEMS

from results import add_run  # benchmarks/results.py: scripts run from this folder

ROOT = Path(__file__).resolve().parent.parent
NOTES = ROOT / "benchmarks" / "data" / "background_200.parquet"
BACKGROUND = ROOT / "data" / "codiesp" / "background" / "notes.parquet"
DEV_NOTES = ROOT / "data" / "codiesp" / "dev" / "notes.parquet"
MODES = ("torch eager fp32", "onnxruntime fp32", "onnxruntime int8")
THREADS = 2  # the machine's cores; the peak matmul uses the same number
PEAK_N = 4096

# Encoder FLOPs of one chunk of T tokens (MiniLM: L=6 layers, hidden H=384, intermediate I=1536,
# 12 heads; a multiply-add counts 2): per layer the Q, K, V and output projections 4 * 2*T*H*H,
# the feed-forward 2 * 2*T*H*I, attention scores Q.K^T 2*T*T*H and their weighted sum of V
# 2*T*T*H (the head count cancels out). Total L * (8*T*H^2 + 4*T*H*I + 4*T^2*H) = 2.87 GFLOP at
# T=128. Embeddings, layer norms, softmax and PLM-ICD's label-attention head are left out, so the
# achieved rate is of the encoder's matmuls only; every chunk is counted at its full 128 tokens.
# int8 does the same work in int8 arithmetic (VNNI), so its share of the fp32 peak may pass 100%.
ENCODER_LAYERS, HIDDEN, INTERMEDIATE, CHUNK_TOKENS = 6, 384, 1536, 128
CHUNK_GFLOP = ENCODER_LAYERS * (8 * CHUNK_TOKENS * HIDDEN**2 + 4 * CHUNK_TOKENS * HIDDEN * INTERMEDIATE
                                + 4 * CHUNK_TOKENS**2 * HIDDEN) / 1e9


def _ensure_notes(path: Path) -> None:
    """Copy 200 background notes next to the benchmark so it runs from a clone."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.read_parquet(BACKGROUND, columns=["note_id", "text"]).head(200).write_parquet(path)


def _run_mode(mode: str, model: Path, notes_path: Path, batch_size: int) -> dict[str, float]:
    """Score every note with one backend in this (fresh) process."""
    from coder.model.folder import load_tokenizer, read_config
    from coder.model.chunking import chunk_notes, score_in_batches
    from coder.model.session import create_session, onnx_forward
    from coder.model.plm_icd import load_torch, torch_forward

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


def _peak_gflops() -> float:
    """Best of five PEAK_N x PEAK_N fp32 matmuls on THREADS torch threads (2*N^3 FLOPs each)."""
    import torch

    torch.set_num_threads(THREADS)
    a, b = torch.randn(PEAK_N, PEAK_N), torch.randn(PEAK_N, PEAK_N)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * PEAK_N**3 / best / 1e9


def _int8_peak_gops() -> float:
    """Best of five PEAK_N x PEAK_N int8 matmuls (uint8 activations x int8 weights, int32 sums: the
    ``MatMulInteger`` kernel dynamic int8 quantisation runs on) in onnxruntime on THREADS threads."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.integers(-127, 127, (PEAK_N, PEAK_N), dtype=np.int8), "b")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "int8_peak",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [PEAK_N, PEAK_N])],
                              [helper.make_tensor_value_info("c", TensorProto.INT32, [PEAK_N, PEAK_N])], [weights])
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = {"a": rng.integers(0, 255, (PEAK_N, PEAK_N), dtype=np.uint8)}
    session.run(None, a)  # warm-up
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        session.run(None, a)
        best = min(best, time.perf_counter() - start)
    return 2 * PEAK_N**3 / best / 1e9


def _int8_instructions() -> str:
    """The CPU's int8 dot-product instruction sets, widest first; onnxruntime's MLAS kernels use the widest."""
    flags = set(next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), []))
    names = [("amx_int8", "AMX"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"), ("avx2", "AVX2 (no VNNI)")]
    return ", ".join(name for flag, name in names if flag in flags) or "none of AMX, AVX-512 VNNI, AVX-VNNI, AVX2"


def _run_predict(notes_path: Path, precision: str = "auto") -> dict[str, float]:
    """`coder predict` with the shipped default model as a subprocess; wall time includes loading.
    Notes with gold codes (CodiEsp dev) are also audited: MAP per system from `coder audit --json`."""
    coder = Path(sys.executable).with_name("coder")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "p.parquet"
        start = time.perf_counter()
        subprocess.run([str(coder), "predict", str(notes_path), "--out", str(out), "--quiet", "--precision", precision], check=True)
        wall_s = time.perf_counter() - start
        manifest = json.loads(out.with_name(f"{out.stem}.manifest.json").read_text())
        gold = notes_path.with_name("codes.parquet")
        maps = {}
        if gold.is_file():
            audit = subprocess.run([str(coder), "audit", str(out), "--gold", str(gold), "--json"], check=True,
                                   capture_output=True, text=True).stdout
            maps = {system: json.loads(audit)[system]["map"] for system in SYSTEMS}
    timing = manifest["timing"]
    return {
        "precision": manifest["model"].get("precision", precision),
        "wall_s": wall_s,
        "notes": timing["notes_this_run"],
        "notes_per_s": timing["notes_per_s"],
        "model_notes_per_s": timing["model_notes_per_s"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "map": maps,
    }


def _split_predict(model: Path, notes_path: Path) -> dict[str, float]:
    """One pipeline batch (``coder.pipeline.code_batch``) on the first notes, its time split by stage
    (the counts every batch records) and by candidate source."""
    from coder.model.load import load_model
    from coder.pipeline import code_batch
    from coder.run import DEFAULT_BATCH_SIZE

    start = time.perf_counter()
    loaded = load_model(model, device="cpu")
    load_s = time.perf_counter() - start
    notes = pl.read_parquet(notes_path).head(DEFAULT_BATCH_SIZE)
    sources: dict[str, float] = {}
    for source in loaded.sources:
        inner = source.candidates

        def timed(frame, inner=inner, name=source.name):
            tick = time.perf_counter()
            try:
                return inner(frame)
            finally:
                sources[name] = sources.get(name, 0.0) + time.perf_counter() - tick

        source.candidates = timed
    start = time.perf_counter()
    counts = code_batch(loaded, notes, top_k=50).counts
    total = time.perf_counter() - start
    stages = {f"stage {key.removeprefix('seconds.')}": value for key, value in counts.items() if key.startswith("seconds.")}
    return {"load_s": load_s, "notes": notes.height, "total_s": total, "precision": loaded.precision, **stages,
            **{f"  source {name}": value for name, value in sources.items()}}


def _in_fresh_process(fn, *args):
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        result = pool.submit(fn, *args).result()
    print(f"{getattr(fn, '__name__', fn)}{args}: {result}", file=sys.stderr)
    return result


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return f"{platform.machine()} ({cpu}, {os.cpu_count()} CPUs)"


def _section(rows: list[tuple[str, int, dict[str, float]]], *, peak: float, int8_peak: float,
             predicts: list[tuple[str, dict[str, float]]], split: dict, load_at_start: float, command: str, note: str,
             skipped: list[str]) -> str:
    modes = [mode for mode in MODES if any(m == mode for m, _, _ in rows)]
    best = {mode: min(r["seconds"] for m, _, r in rows if m == mode) for mode in modes}
    base = best[MODES[0]]  # torch eager at its best batch size
    notes_per_s = {mode: rows[0][2]["notes"] / best[mode] for mode in modes}
    lines = [
        f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"`{command}` on {_machine()}; load average {load_at_start:.1f} at start, {os.getloadavg()[0]:.1f} at the end. {note}",
        "",
        f"Model only. Peaks on {THREADS} threads, best of 5 {PEAK_N}x{PEAK_N} matmuls: fp32 (torch) {peak:.1f} GFLOP/s, "
        f"int8 (onnxruntime MatMulInteger) {int8_peak:.1f} GOP/s; int8 instructions of this CPU: {_int8_instructions()}. "
        f"Encoder {CHUNK_GFLOP:.2f} GFLOP per {CHUNK_TOKENS}-token chunk; an int8 mode's share is of the int8 peak.",
        *(f"Skipped: {line}" for line in skipped),
        "",
        "| mode | notes per pass | notes/s | chunks/s | speed-up vs torch (best) | encoder G(FL)OP/s | % of its peak | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, size, r in rows:
        gflops = r["chunks"] * CHUNK_GFLOP / r["seconds"]
        share = gflops / (int8_peak if mode.endswith("int8") else peak)
        lines.append(
            f"| {mode} | {size} | {r['notes'] / r['seconds']:.2f} | {r['chunks'] / r['seconds']:.1f} | "
            f"{base / r['seconds']:.2f}× | {gflops:.1f} | {100 * share:.0f}% | {r['peak_rss_mb']:.0f} |"
        )
    first = rows[0][2]
    lines += [
        "",
        "Best of each mode against torch eager at its best: "
        + ", ".join(f"{mode} {base / best[mode]:.2f}×" for mode in modes[1:]) + ".",
        f"{first['notes']} notes, {first['chunks']} chunks; tokenising + chunking all notes: {first['chunking_s']:.2f} s.",
        "",
        "End to end, `coder predict NOTES --out p.parquet --quiet` (shipped default model, its own process):",
        "",
        "| notes | PLM-ICD precision | notes/s (manifest) | model notes/s (manifest) | wall s incl. load | notes/s incl. load | peak RSS (MB) | MAP CM / PCS (`coder audit`) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in predicts:
        maps = " / ".join(f"{value:.4f}" for value in r["map"].values()) or "no gold codes"
        lines.append(f"| {name} | {r['precision']} | {r['notes_per_s']:.2f} | {r['model_notes_per_s']:.2f} | {r['wall_s']:.1f} | "
                     f"{r['notes'] / r['wall_s']:.2f} | {r['peak_rss_mb']:.0f} | {maps} |")
    end_to_end = predicts[0][1]["notes_per_s"]  # the model-only notes, `coder predict`, startup excluded
    lines += [
        "",
        f"Ratios on {predicts[0][0]} ({rows[0][2]['notes']} notes), in this run: `coder predict` end to end "
        f"{end_to_end:.2f} notes/s = {end_to_end / notes_per_s[MODES[0]]:.2f}× torch eager fp32 (goal ≥ 3.0×), "
        f"{end_to_end / notes_per_s[MODES[2]]:.2f}× the int8 model alone (goal ≥ 0.9×).",
    ]
    stages = {k: v for k, v in split.items() if k not in ("load_s", "notes", "total_s", "precision")}
    lines += [
        "",
        f"`coder.pipeline.code_batch` on {split['notes']} dev notes in-process, one call (one pipeline batch), "
        f"{split['precision']} model loaded in {split['load_s']:.1f} s: {split['total_s']:.1f} s, "
        f"{split['notes'] / split['total_s']:.2f} notes/s.",
        "",
        "| stage | s | share | notes/s if alone |",
        "|---|---:|---:|---:|",
    ]
    for stage, seconds in stages.items():
        lines.append(f"| {stage} | {seconds:.2f} | {100 * seconds / split['total_s']:.0f}% | {split['notes'] / seconds:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "codiesp-minilm")
    parser.add_argument("--notes", type=Path, default=NOTES)
    parser.add_argument("--batch-sizes", default="1,2,8", help="Notes per forward pass to try for every mode (comma-separated).")
    parser.add_argument("--note", default="", help="Free text recorded with the run (e.g. other load on the machine).")
    args = parser.parse_args()
    _ensure_notes(args.notes)
    load_at_start = os.getloadavg()[0]
    peak = _in_fresh_process(_peak_gflops)
    int8_peak = _in_fresh_process(_int8_peak_gops)
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    modes, runs, skipped = list(MODES), [(args.notes, "auto"), (DEV_NOTES, "auto"), (DEV_NOTES, "fp32")], []
    if not (args.model / ONNX_FILES["fp32"]).is_file():  # git-ignored: the shipped folder carries int8 only
        modes.remove("onnxruntime fp32")
        runs.pop()
        skipped.append(f"the fp32 ONNX rows: {args.model / ONNX_FILES['fp32']} is absent (git keeps int8 only); "
                       f"`coder export {args.model} --dev-notes data/codiesp/dev/notes.parquet --dev-codes "
                       "data/codiesp/dev/codes.parquet` writes it.")
    rows = [(mode, size, _in_fresh_process(_run_mode, mode, args.model, args.notes, size)) for mode in modes for size in sizes]
    # int8 is what the default model runs on CPU; fp32 (torch-parity) is the accuracy reference
    predicts = [(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", _in_fresh_process(_run_predict, path, precision))
                for path, precision in runs]
    split = _in_fresh_process(_split_predict, args.model, DEV_NOTES)
    section = _section(rows, peak=peak, int8_peak=int8_peak, predicts=predicts, split=split, load_at_start=load_at_start,
                       note=args.note, skipped=skipped, command=shlex.join(["python", "benchmarks/throughput.py", *sys.argv[1:]]))
    add_run("throughput", title="## PLM-ICD scoring throughput (benchmarks/throughput.py)", section=section)
    print(section)


if __name__ == "__main__":
    main()
