"""Where onnxruntime's CPU time goes in the PLM-ICD model, by operator type, with and without the
graph fusions that `coder.model.session` switches off on CPU.

    python benchmarks/onnx_profile.py [--model models/codiesp-minilm] [--precision int8] [--notes 48]

Scores the first N background notes (one note per pass, as `coder predict`) twice in one
process: with onnxruntime's full fusion set, then as `create_session` builds CPU sessions
(CPU_DISABLED_FUSIONS off). Kernel times come from onnxruntime's profiler. The run is added to
this script's section of benchmarks/RESULTS.md (history kept).
CodiEsp background notes (CLEF eHealth 2020, Miranda-Escalada et al.): CC BY 4.0.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import onnxruntime as ort
import polars as pl

from coder.model.folder import ONNX_FILES, load_tokenizer, read_config
from coder.model.chunking import batches, chunk_notes
from coder.cpus import compute_threads
from coder.model.scorer import NOTES_PER_PASS
from coder.model.session import CPU_DISABLED_FUSIONS, CPU_PROVIDER

from results import add_run  # benchmarks/results.py: scripts run from this folder

ROOT = Path(__file__).resolve().parent.parent
NOTES = ROOT / "benchmarks" / "data" / "background_200.parquet"
TOP = 12


def note_feeds(model: Path, texts: list[str]) -> list[dict]:
    """The model's inputs for ``texts``, as `coder predict` batches them on CPU."""
    config, tokenizer = read_config(model), load_tokenizer(model)
    chunks = chunk_notes(texts, tokenizer=tokenizer, chunk_len=config.chunk_len, max_chunks=config.max_chunks)
    return [{"input_ids": b.input_ids, "attention_mask": b.attention_mask}
            for b in batches(chunks, batch_size=NOTES_PER_PASS, pad_id=tokenizer.pad_token_id)]


def profile(path: Path, feeds: list[dict], *, disabled: list[str], notes: int) -> tuple[float, Counter]:
    """Notes/s of one timed pass over ``feeds`` (after a warm-up) and kernel microseconds per op type."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = compute_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    session = ort.InferenceSession(str(path), options, providers=[CPU_PROVIDER], disabled_optimizers=disabled)
    session.run(None, feeds[-1])
    start = time.perf_counter()
    for feed in feeds:
        session.run(None, feed)
    seconds = time.perf_counter() - start
    by_op: Counter = Counter()
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
    return notes / seconds, by_op


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "codiesp-minilm")
    parser.add_argument("--precision", default="int8", choices=sorted(ONNX_FILES))
    parser.add_argument("--notes", type=int, default=48)
    args = parser.parse_args()
    texts = pl.read_parquet(NOTES)["text"].head(args.notes).to_list()
    feeds = note_feeds(args.model, texts)
    path = args.model / ONNX_FILES[args.precision]
    runs = {"all fusions": profile(path, feeds, disabled=[], notes=len(texts)),
            f"{', '.join(CPU_DISABLED_FUSIONS)} off (coder's CPU sessions)":
                profile(path, feeds, disabled=list(CPU_DISABLED_FUSIONS), notes=len(texts))}
    command = shlex.join(["python", "benchmarks/onnx_profile.py", *sys.argv[1:]])
    lines = [f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"`{command}`: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}, {len(texts)} notes, "
             f"{compute_threads()} threads.", ""]
    for name, (rate, by_op) in runs.items():
        total = sum(by_op.values())
        lines += [f"**{name}**: {rate:.1f} notes/s; kernel time by operator type:", "",
                  "| operator | s | share |", "|---|---:|---:|"]
        lines += [f"| {op} | {us / 1e6:.3f} | {100 * us / total:.1f}% |" for op, us in by_op.most_common(TOP)]
        lines.append("")
    section = "\n".join(lines) + "\n"
    add_run("onnx-profile", title="## onnxruntime profile of PLM-ICD on CPU (benchmarks/onnx_profile.py)", section=section)
    print(section)


if __name__ == "__main__":
    main()
