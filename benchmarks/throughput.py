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
source, the dense search's sentence encoder apart. The ratios the speed goals are set in close the
table, with why they stand where they do: what the end-to-end goals leave the stages other than
PLM-ICD, the int8 model's kernel time by kind (onnxruntime's profiler), onnxruntime's int8 kernels
alone at the encoder's own matmul shapes, and the dense search's encoder's rate against the int8 peak.
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
from types import SimpleNamespace

import polars as pl

from coder.candidates.sentence_encoder import layer_count, read_layers
from coder.cpus import physical_cores
from coder.model.folder import ONNX_FILES, read_config
from coder.model.scorer import NOTES_PER_PASS
from coder.schema import SYSTEMS

from results import add_run, code_version  # benchmarks/results.py: scripts run from this folder

ROOT = Path(__file__).resolve().parent.parent
NOTES = ROOT / "benchmarks" / "data" / "background_200.parquet"
BACKGROUND = ROOT / "data" / "codiesp" / "background" / "notes.parquet"
DEV_NOTES = ROOT / "data" / "codiesp" / "dev" / "notes.parquet"
MODES = ("torch eager fp32", "onnxruntime fp32", "onnxruntime int8")
THREADS = 2  # the machine's cores; the peak matmul uses the same number
REPEATS = 15  # the model-only notes repeated for the end-to-end rows with worker processes: 12 batches of 256
PEAK_N = 4096

# Encoder FLOPs of one chunk of T tokens (MiniLM: L=6 layers, hidden H=384, intermediate I=1536,
# 12 heads; a multiply-add counts 2): per layer the Q, K, V and output projections 4 * 2*T*H*H,
# the feed-forward 2 * 2*T*H*I, attention scores Q.K^T 2*T*T*H and their weighted sum of V
# 2*T*T*H (the head count cancels out). Total L * (8*T*H^2 + 4*T*H*I + 4*T^2*H) = 2.87 GFLOP at
# T=128. Embeddings, layer norms, softmax and PLM-ICD's label-attention head are left out, so the
# achieved rate is of the encoder's matmuls only; every chunk is counted at its full 128 tokens.
# int8 does the same work in int8 arithmetic (VNNI), so its share of the fp32 peak may pass 100%.
ENCODER_LAYERS, HIDDEN, INTERMEDIATE, CHUNK_TOKENS = 6, 384, 1536, 128
# The encoder's matmuls against weights, which int8 quantisation covers: (K, N, per layer): Q, K, V
# and output projections, then the feed-forward pair. Attention's own products stay fp32.
ENCODER_MATMULS = ((HIDDEN, HIDDEN, 4), (HIDDEN, INTERMEDIATE, 1), (INTERMEDIATE, HIDDEN, 1))


def encoder_gflop(rows: int, tokens: int, layers: int = ENCODER_LAYERS) -> tuple[float, float]:
    """(weight matmuls, attention) GFLOP of ``rows`` rows of ``tokens`` tokens through ``layers`` of the encoder's layers."""
    weights = layers * sum(count * 2 * tokens * k * n for k, n, count in ENCODER_MATMULS) / 1e9
    return rows * weights, rows * layers * 4 * tokens**2 * HIDDEN / 1e9


WEIGHT_GFLOP, ATTENTION_GFLOP = encoder_gflop(1, CHUNK_TOKENS)
CHUNK_GFLOP = WEIGHT_GFLOP + ATTENTION_GFLOP
# Operator types of onnxruntime's int8 matmul kernels in a dynamically quantised model (the
# activation's quantisation included), and of attention, for the int8 model's kernel-time split.
INT8_MATMUL_OPS = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLinear", "MatMulInteger")
ATTENTION_OPS = ("Attention", "MultiHeadAttention")
DENSE_ENCODER = "    dense's encoder"  # the split's row of the dense search's sentence encoder, under its source
DENSE_GFLOP = "dense encoder GFLOP"  # the split's work of the dense search's encoder, not a stage
DENSE_LAYERS = "dense encoder layers"  # the layers its sentences go through, not a stage


def _ensure_notes(path: Path) -> None:
    """Copy 200 background notes next to the benchmark so it runs from a clone."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.read_parquet(BACKGROUND, columns=["note_id", "text"]).head(200).write_parquet(path)


def _repeated(path: Path, times: int) -> Path:
    """The notes of ``path`` ``times`` over with fresh ids (a git-ignored file beside it): enough batches
    for every worker of `coder predict --workers`, each note's cost that of the model-only notes."""
    target = path.with_name(f"{path.stem}_x{times}.parquet")
    if not target.exists():
        notes = pl.read_parquet(path)
        pl.concat([notes.with_columns(pl.col("note_id") + f"-{k}") for k in range(times)]).write_parquet(target)
    return target


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


def _best_seconds(node, inputs: dict, initializers: list, output, repeats: int = 5) -> float:
    """Best of ``repeats`` runs of a one-node onnxruntime graph on THREADS threads (after a warm-up)."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    graph = helper.make_graph([node], "one_node",
                              [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
                               for name, a in inputs.items()],
                              [output], [numpy_helper.from_array(a, name) for name, a in initializers])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=opsets, ir_version=9).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    session.run(None, inputs)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, inputs)
        best = min(best, time.perf_counter() - start)
    return best


def _int8_matmul_seconds(m: int, k: int, n: int, *, dynamic: bool, repeats: int = 5) -> float:
    """Best time of one [m, k] x [k, n] int8 product with int8 weights: ``MatMulInteger`` on uint8
    activations, or (``dynamic``) ``DynamicQuantizeMatMul``, which quantises fp32 activations first
    as dynamic int8 quantisation does."""
    import numpy as np
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 127, (k, n), dtype=np.int8)
    if dynamic:
        node = helper.make_node("DynamicQuantizeMatMul", ["a", "b", "b_scale"], ["c"], domain="com.microsoft")
        inputs = {"a": rng.standard_normal((m, k), dtype=np.float32)}
        initializers = [("b", weights), ("b_scale", np.array(0.01, dtype=np.float32))]
        output = helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, n])
    else:
        node = helper.make_node("MatMulInteger", ["a", "b"], ["c"])
        inputs, initializers = {"a": rng.integers(0, 255, (m, k), dtype=np.uint8)}, [("b", weights)]
        output = helper.make_tensor_value_info("c", TensorProto.INT32, [m, n])
    return _best_seconds(node, inputs, initializers, output, repeats=repeats)


def _int8_peak_gops() -> float:
    """Best of five PEAK_N x PEAK_N int8 matmuls (uint8 activations x int8 weights, int32 sums: the
    ``MatMulInteger`` kernel dynamic int8 quantisation runs on) in onnxruntime on THREADS threads."""
    return 2 * PEAK_N**3 / _int8_matmul_seconds(PEAK_N, PEAK_N, PEAK_N, dynamic=False) / 1e9


def _int8_shape_gops(rows: int) -> dict[str, float]:
    """GOP/s of onnxruntime's int8 kernels alone at the encoder's own shapes ([rows, K] x [K, N] for
    each of ENCODER_MATMULS, weighted by their FLOPs): ``MatMulInteger`` as for the peak, and
    ``DynamicQuantizeMatMul`` with the fp32 activations quantised first, as the int8 model runs them."""
    out = {}
    for name, dynamic in (("MatMulInteger", False), ("DynamicQuantizeMatMul", True)):
        seconds = sum(per_layer * _int8_matmul_seconds(rows, k, n, dynamic=dynamic, repeats=20) for k, n, per_layer in ENCODER_MATMULS)
        out[name] = sum(per_layer * 2 * rows * k * n for k, n, per_layer in ENCODER_MATMULS) / seconds / 1e9
    return out


def _kernel_split(model: Path, notes_path: Path) -> dict[str, float]:
    """Shares of the int8 model's kernel time (onnxruntime's profiler, `benchmarks/onnx_profile.py`)
    over ``notes_path``'s notes as `coder predict` runs them: int8 matmul kernels, attention, the rest."""
    from onnx_profile import note_feeds, profile

    from coder.model.session import CPU_DISABLED_FUSIONS

    texts = pl.read_parquet(notes_path)["text"].to_list()
    _, by_op = profile(model / ONNX_FILES["int8"], note_feeds(model, texts), disabled=list(CPU_DISABLED_FUSIONS), notes=len(texts))
    total = sum(by_op.values())
    int8 = sum(by_op[op] for op in INT8_MATMUL_OPS) / total
    attention = sum(by_op[op] for op in ATTENTION_OPS) / total
    return {"int8 matmuls": int8, "attention": attention, "everything else": 1 - int8 - attention}


def _int8_instructions() -> str:
    """The CPU's int8 dot-product instruction sets, widest first; onnxruntime's MLAS kernels use the widest."""
    flags = set(next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), []))
    names = [("amx_int8", "AMX"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"), ("avx2", "AVX2 (no VNNI)")]
    return ", ".join(name for flag, name in names if flag in flags) or "none of AMX, AVX-512 VNNI, AVX-VNNI, AVX2"


def run_predict(notes_path: Path, precision: str = "auto", workers: int = 1) -> dict[str, float]:
    """`coder predict` with the shipped default model as a subprocess (``workers``: its --workers); wall
    time includes loading. Notes with gold codes (CodiEsp dev) are also audited: MAP per system from
    `coder audit --json`."""
    coder = Path(sys.executable).with_name("coder")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "p.parquet"
        start = time.perf_counter()
        subprocess.run([str(coder), "predict", str(notes_path), "--out", str(out), "--quiet", "--precision", precision,
                        "--workers", str(workers)], check=True)
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
        "provider": manifest["model"]["execution_provider"],
        "stage_seconds": timing["stage_seconds"],
        "workers": workers,
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
    from coder.assembly import load_model
    from coder.pipeline import code_batch
    from coder.run import DEFAULT_BATCH_SIZE

    start = time.perf_counter()
    loaded = load_model(model, device="cpu")
    load_s = time.perf_counter() - start
    notes = pl.read_parquet(notes_path).head(DEFAULT_BATCH_SIZE)
    sources: dict[str, float] = {}
    encoder = {DENSE_ENCODER: 0.0, DENSE_GFLOP: 0.0, DENSE_LAYERS: 0}
    for source in loaded.stack.sources:
        if source.name == "dense":  # its sentence encoder's calls, timed and counted in padded rows
            layers = layer_count(read_layers(Path(source.sentence_layers))) if source.sentence_layers else ENCODER_LAYERS
            source.sentence_session_, encoder[DENSE_LAYERS] = _counted(source.sentence_session_, encoder, layers), layers
    for source in loaded.stack.sources:
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
            **{f"  source {name}": value for name, value in sources.items()}, **encoder}


def _counted(session, tally: dict[str, float], layers: int) -> SimpleNamespace:
    """``session`` whose ``run`` adds its seconds and its encoder GFLOP (``encoder_gflop`` of the padded
    input through ``layers`` layers) to ``tally``: the dense search's sentence encoder, MiniLM-shaped as the shipped one."""

    def run(names, feed, *args):
        tick = time.perf_counter()
        try:
            return session.run(names, feed, *args)
        finally:
            tally[DENSE_ENCODER] += time.perf_counter() - tick
            tally[DENSE_GFLOP] += sum(encoder_gflop(*feed["input_ids"].shape, layers))

    return SimpleNamespace(run=run)


def _in_fresh_process(fn, *args):
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        result = pool.submit(fn, *args).result()
    print(f"{getattr(fn, '__name__', fn)}{args}: {result}", file=sys.stderr)
    return result


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return f"{platform.machine()} ({cpu}, {os.cpu_count()} CPUs)"


def _int8_run(rows: list[tuple[str, int, dict[str, float]]]) -> dict[str, float]:
    """The int8 model's run at NOTES_PER_PASS notes a pass (as `coder predict` runs it), else its fastest."""
    runs = {size: r for mode, size, r in rows if mode == MODES[2]}
    return runs.get(NOTES_PER_PASS) or min(runs.values(), key=lambda r: r["seconds"])


def _pass_rows(run: dict[str, float]) -> int:
    """Encoder rows (tokens) of one pass of NOTES_PER_PASS notes, at this run's mean chunks per note."""
    return round(NOTES_PER_PASS * run["chunks"] / run["notes"]) * CHUNK_TOKENS


def _why_int8(run: dict[str, float], *, int8_peak: float, shapes: dict[str, float], kernels: dict[str, float],
              head_gflop: float) -> list[str]:
    """Why the int8 encoder's share of the peak is what it is: its kernel-time split, the int8
    kernels' own rate at the encoder's shapes, and the share each would allow (the other kernels'
    time as measured, the profiler's shares applied to the run's time)."""
    seconds, work = run["seconds"], run["chunks"] * CHUNK_GFLOP
    int8_work = run["chunks"] * (WEIGHT_GFLOP + head_gflop)  # the encoder's and the head's products
    rest = seconds * (1 - kernels["int8 matmuls"])

    def share(rate: float) -> float:
        return work / (rest + int8_work / rate) / int8_peak

    allowed = work / (0.5 * int8_peak) - int8_work / int8_peak  # seconds left to the rest at 50% with int8 at peak
    split = ", ".join(f"{name} {100 * value:.0f}%" for name, value in kernels.items())
    at_shape = ", ".join(f"{name} {rate:.0f} GOP/s ({100 * rate / int8_peak:.0f}% of the peak)" for name, rate in shapes.items())
    return [
        f"Why the int8 encoder reaches {100 * work / seconds / int8_peak:.0f}% of the int8 peak. Its model's kernel time "
        f"(onnxruntime's profiler, same notes, {NOTES_PER_PASS} notes a pass): {split} (the int8 matmuls include quantising "
        "their activations; attention and everything else, layer norms, GELU, residual adds and the label-attention "
        f"head's softmax and peak, run in fp32). Alone at the encoder's own shapes ([{_pass_rows(run)}, K] x [K, N], "
        f"{NOTES_PER_PASS} notes' chunks; 384 and 1536 wide): {at_shape}. With the other kernels as measured, the share "
        f"could reach at most {100 * share(int8_peak):.0f}% with every int8 matmul at the peak, "
        f"{100 * share(shapes['DynamicQuantizeMatMul']):.0f}% at DynamicQuantizeMatMul's rate at these shapes; 50% "
        f"needs attention and everything else at {100 * max(0.0, allowed) / rest:.0f}% of their time even then.",
    ]


def _section(rows: list[tuple[str, int, dict[str, float]]], *, peak: float, int8_peak: float,
             predicts: list[tuple[str, dict[str, float]]], split: dict, load_at_start: float, command: str, note: str,
             skipped: list[str], shapes: dict[str, float], kernels: dict[str, float], head_gflop: float, commit: str) -> str:
    modes = [mode for mode in MODES if any(m == mode for m, _, _ in rows)]
    best = {mode: min(r["seconds"] for m, _, r in rows if m == mode) for mode in modes}
    base = best[MODES[0]]  # torch eager at its best batch size
    notes_per_s = {mode: rows[0][2]["notes"] / best[mode] for mode in modes}
    lines = [
        f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"`{command}` on {_machine()}, commit {commit}; load average {load_at_start:.1f} at start, {os.getloadavg()[0]:.1f} at the end. {note}",
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
        "End to end, `coder predict NOTES --out p.parquet --quiet --workers N` (shipped default model, its own "
        "process; N worker processes beside it when above 1):",
        "",
        "| notes | workers | PLM-ICD precision | notes/s (manifest) | model notes/s (manifest) | wall s incl. load | notes/s incl. load | peak RSS (MB, largest process) | MAP CM / PCS (`coder audit`) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in predicts:
        maps = " / ".join(f"{value:.4f}" for value in r["map"].values()) or "no gold codes"
        lines.append(f"| {name} | {r['workers']} | {r['precision']} | {r['notes_per_s']:.2f} | {r['model_notes_per_s']:.2f} | "
                     f"{r['wall_s']:.1f} | {r['notes'] / r['wall_s']:.2f} | {r['peak_rss_mb']:.0f} | {maps} |")
    on_notes = [(name, r) for name, r in predicts if name != str(DEV_NOTES.relative_to(ROOT))]  # the model-only notes
    end_to_end = max(r["notes_per_s"] for _, r in on_notes)
    torch_rate, int8_rate = notes_per_s[MODES[0]], notes_per_s[MODES[2]]
    other = 1 - split["stage score"] / split["total_s"]
    lines += [
        "",
        f"Ratios on {predicts[0][0]} ({rows[0][2]['notes']} notes), in this run: `coder predict` end to end "
        f"(the fastest of " + ", ".join(f"{name} with {r['workers']} worker{'s' * (r['workers'] > 1)} {r['notes_per_s']:.2f}"
                                          for name, r in on_notes)
        + f"; start-up excluded, the workers' own included) {end_to_end:.2f} notes/s = {end_to_end / torch_rate:.2f}× "
        "torch eager fp32 (goal ≥ 3.0×), "
        f"{end_to_end / int8_rate:.2f}× the int8 model alone (goal ≥ 0.9×). What the goals leave the stages other "
        f"than PLM-ICD: 3.0× needs {3 * torch_rate:.2f} notes/s end to end, and the int8 model alone gives "
        f"{int8_rate:.2f} ({int8_rate / torch_rate:.2f}×), "
        + (f"so at most {100 * (1 - 3 * torch_rate / int8_rate):.1f}% of a batch" if 3 * torch_rate < int8_rate else
           "so none at all: not reachable with this encoder whatever the other stages cost")
        + f"; 0.9× leaves them 10%. They take {100 * other:.0f}% of the pipeline batch below.",
        "",
        *_why_int8(_int8_run(rows), int8_peak=int8_peak, shapes=shapes, kernels=kernels, head_gflop=head_gflop),
    ]
    stages = {k: v for k, v in split.items() if k not in ("load_s", "notes", "total_s", "precision", DENSE_GFLOP, DENSE_LAYERS)}
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
    # 0.9x the encoder alone: everything but PLM-ICD's stage within 1/0.9 - 1 of that stage's time
    plm_s = split["stage score"]
    budget, rest = plm_s / 0.9 - plm_s, split["total_s"] - plm_s
    sources = sorted(((k.strip().removeprefix("source "), v) for k, v in stages.items() if k.strip().startswith("source ")),
                     key=lambda item: -item[1])
    dense_s, encoder_s = split.get("  source dense", 0.0), split[DENSE_ENCODER]
    plm = _int8_run(rows)
    lines += [
        "",
        f"How far from 0.9× the int8 encoder, stage by stage: with PLM-ICD's stage at {plm_s:.2f} s, the other stages "
        f"may take {budget:.2f} s of this batch; they take {rest:.2f} s ({rest / budget:.1f}× that), of which "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in sources)
        + f". The dense search's own encoder is a second pass over the note's sentences through {split[DENSE_LAYERS]} "
        f"layers of a network of PLM-ICD's width (PLM-ICD's encoder: {ENCODER_LAYERS}).",
    ]
    if encoder_s:
        share, plm_share = split[DENSE_GFLOP] / encoder_s / int8_peak, plm["chunks"] * CHUNK_GFLOP / plm["seconds"] / int8_peak
        lines[-1] += (
            f" Its encoder took {encoder_s:.2f} s of the dense search's {dense_s:.2f} s at {share * int8_peak:.0f} GOP/s on "
            f"the padded sentences, {100 * share:.0f}% of the int8 peak (the int8 model alone above: {100 * plm_share:.0f}%)"
            + (": no further from the peak than PLM-ICD's, so it gets cheaper only by doing less." if share >= 0.9 * plm_share
               else ": further from the peak than PLM-ICD's.")
            + f" Without the dense search the other stages would still take {rest - dense_s:.2f} s, "
            f"{(rest - dense_s) / budget:.1f}× what the goal leaves them.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "codiesp-minilm")
    parser.add_argument("--notes", type=Path, default=NOTES)
    parser.add_argument("--batch-sizes", default="1,2,8", help="Notes per forward pass to try for every mode (comma-separated).")
    parser.add_argument("--note", default="", help="Free text recorded with the run (e.g. other load on the machine).")
    args = parser.parse_args()
    _ensure_notes(args.notes)
    load_at_start, commit = os.getloadavg()[0], code_version()  # at the start: the code this run imports
    peak = _in_fresh_process(_peak_gflops)
    int8_peak = _in_fresh_process(_int8_peak_gops)
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    workers = physical_cores()  # `coder predict --workers`: one per core
    repeated = _repeated(args.notes, REPEATS)
    runs = [(args.notes, "auto", 1), (repeated, "auto", 1), (repeated, "auto", workers), (DEV_NOTES, "auto", 1), (DEV_NOTES, "fp32", 1)]
    modes, skipped = list(MODES), []
    if not (args.model / ONNX_FILES["fp32"]).is_file():  # git-ignored: the shipped folder carries int8 only
        modes.remove("onnxruntime fp32")
        runs.pop()
        skipped.append(f"the fp32 ONNX rows: {args.model / ONNX_FILES['fp32']} is absent (git keeps int8 only); "
                       f"`coder export {args.model} --dev-notes data/codiesp/dev/notes.parquet --dev-codes "
                       "data/codiesp/dev/codes.parquet` writes it.")
    rows = [(mode, size, _in_fresh_process(_run_mode, mode, args.model, args.notes, size)) for mode in modes for size in sizes]
    # int8 is what the default model runs on CPU; fp32 (torch-parity) is the accuracy reference
    predicts = [(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}",
                 _in_fresh_process(run_predict, path, precision, n)) for path, precision, n in runs]
    split = _in_fresh_process(_split_predict, args.model, DEV_NOTES)
    shapes = _in_fresh_process(_int8_shape_gops, _pass_rows(_int8_run(rows)))
    kernels = _in_fresh_process(_kernel_split, args.model, args.notes)
    config = read_config(args.model)
    head_gflop = 2 * CHUNK_TOKENS * (HIDDEN * config.attention_dim + (config.attention_dim + HIDDEN) * len(config.labels)) / 1e9
    section = _section(rows, peak=peak, int8_peak=int8_peak, predicts=predicts, split=split, load_at_start=load_at_start,
                       note=args.note, skipped=skipped, command=shlex.join(["python", "benchmarks/throughput.py", *sys.argv[1:]]),
                       shapes=shapes, kernels=kernels, head_gflop=head_gflop, commit=commit)
    add_run("throughput", title="## PLM-ICD scoring throughput (benchmarks/throughput.py)", section=section)
    print(section)


if __name__ == "__main__":
    main()
