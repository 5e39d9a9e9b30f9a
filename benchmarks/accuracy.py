"""Dev ablation of the candidate sources and the stacked reranker (CodiEsp MAP and P@5).

Every source is fitted on train only; rerankers learn from out-of-fold train candidates
(protocol a: dev never seen). With ``--plm-scores`` (a parquet of PLM-ICD dev scores:
note_id, system, code, plm_icd), rows with that source use protocol b: sources fitted on train,
each dev note scored by a reranker cross-fitted on the other dev folds. Also reports calibration
of the final stack on dev, and CodiEsp-X-style evidence F1 (see ``evidence_f1``). Prints the
tables and adds a dated run to this benchmark's section of benchmarks/RESULTS.md.

    python benchmarks/accuracy.py [--plm-model models/NAME | --plm-scores dev_scores.parquet] [--rows 'NAME;...']
                                  [--search-cache DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from coder.audit.metrics import clean_ranking, mean_average_precision
from coder.candidates.features import LABEL, PLM_ICD, assemble, top_codes, with_labels
from coder.ontology import load_ontology
from coder.candidates.ontology_search import OntologySearch, ontology_terms
from coder.rerank.reranker import SCORE, Reranker, gate_notes, resolve_hierarchy
from coder.schema import CODE, EVIDENCE_OFFSETS, NOTE_ID, SYSTEM, SYSTEMS, TEXT
from coder.train.stacking import (
    Corpus, choose_cuts, cross_fit, fit_builder, fold_ids, labelled_frame, out_of_fold_sources, predictor_source,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "codiesp"
BEGIN, END = "<!-- accuracy: begin -->", "<!-- accuracy: end -->"
BASE = ("lexicon", "ontology", "tfidf")
logger = logging.getLogger("accuracy")


def ranking_metrics(rankings: dict[str, dict[str, list[str]]], gold: pl.DataFrame) -> dict[str, float]:
    """MAP (official CodiEsp rules), P@5 (mean over the notes MAP counts) and how many notes
    were ranked, per system."""
    out = {}
    for system in SYSTEMS:
        truth: dict[str, set[str]] = {}
        for note_id, code in gold.filter(pl.col(SYSTEM) == system).select(NOTE_ID, CODE).iter_rows():
            truth.setdefault(note_id, set()).add(code.lower())
        ranked = {n: clean_ranking(codes) for n, codes in rankings.get(system, {}).items()}
        ranked = {n: codes for n, codes in ranked.items() if codes}
        out[f"MAP {system}"] = mean_average_precision(ranked, truth)
        out[f"P@5 {system}"] = float(np.mean([len(set(c[:5]) & truth.get(n, set())) / 5 for n, c in ranked.items()]))
        out[f"notes {system}"] = len(ranked)
    return out


def evidence_f1(predicted: pl.DataFrame, evidence: pl.DataFrame) -> dict[str, float]:
    """CodiEsp-X-style F1 per system. A predicted (note, code, start, end) is a true positive when
    the note has that gold code and one of its gold evidence spans (any piece of a discontinuous
    span) overlaps [start, end); a gold (note, code, span) is found when some true positive
    overlaps it. Precision = true positives / predictions, recall = found / gold spans."""
    pieces = evidence.with_row_index("span").with_columns(pl.col(EVIDENCE_OFFSETS).str.split(";")).explode(EVIDENCE_OFFSETS)
    pieces = pieces.with_columns(pl.col(EVIDENCE_OFFSETS).str.split(" ").list.eval(pl.element().cast(pl.Int64)).alias("o")).select(
        NOTE_ID, SYSTEM, CODE, "span", pl.col("o").list.get(0).alias("g_start"), pl.col("o").list.get(1).alias("g_end"))
    pred = predicted.select(NOTE_ID, SYSTEM, CODE, "evidence_start", "evidence_end").with_row_index("pred")
    hits = pred.join(pieces, on=[NOTE_ID, SYSTEM, CODE]).filter(
        (pl.col("evidence_start") < pl.col("g_end")) & (pl.col("g_start") < pl.col("evidence_end")))
    out = {}
    for system in SYSTEMS:
        n_pred = pred.filter(pl.col(SYSTEM) == system).height
        n_gold = evidence.filter(pl.col(SYSTEM) == system).height
        tp = hits.filter(pl.col(SYSTEM) == system)["pred"].n_unique()
        found = hits.filter(pl.col(SYSTEM) == system)["span"].n_unique()
        p, r = tp / max(n_pred, 1), found / max(n_gold, 1)
        out[system] = 2 * p * r / (p + r) if p + r else 0.0
        out[f"P {system}"], out[f"R {system}"] = p, r
    return out


def calibration(scored: pl.DataFrame, *, bins: int = 10) -> tuple[str, float]:
    """Markdown table of mean score vs observed gold rate per score bin, and the expected
    calibration error (bin-size-weighted mean |observed - predicted|)."""
    binned = scored.with_columns((pl.col(SCORE) * bins).floor().clip(0, bins - 1).alias("bin")).group_by("bin").agg(
        pl.len().alias("n"), pl.col(SCORE).mean().alias("mean_score"), pl.col(LABEL).mean().alias("gold_rate")).sort("bin")
    ece = float((binned["n"] * (binned["gold_rate"] - binned["mean_score"]).abs()).sum() / binned["n"].sum())
    lines = ["| score bin | candidates | mean score | gold rate |", "|---|---:|---:|---:|"]
    lines += [f"| {b / bins:.1f}-{(b + 1) / bins:.1f} | {n:,} | {m:.3f} | {g:.3f} |" for b, n, m, g in binned.iter_rows()]
    return "\n".join(lines), ece


class Ablation:
    """Everything the rows share: corpora, out-of-fold train parts, dev source frames."""

    def __init__(self, *, folds: int, plm_scores: Path | None, search_cache: Path | None):
        self.train, self.dev = Corpus.read(DATA / "train"), Corpus.read(DATA / "dev")
        started = time.perf_counter()
        self.search: OntologySearch | None = None  # fitted only when the cache lacks a split
        self.search_train, self.search_dev = (self._search(split.notes, name, search_cache)
                                              for split, name in ((self.train, "train"), (self.dev, "dev")))
        logger.info("ontology search ready in %.0f s", time.perf_counter() - started)
        self.parts, self.dev_parts = {}, {}
        for mode, train, dev in (("full", self.train, self.dev), ("text", self.train.text_only(TEXT), self.dev.text_only(TEXT))):
            self.parts[mode] = out_of_fold_sources(train, search=None, search_candidates=self.search_train, folds=folds)
            builder = fit_builder(train, search=None)
            self.dev_parts[mode] = (builder.source_frames(dev.notes, search_candidates=self.search_dev), builder.prior)
        if plm_scores is not None:  # PLM-ICD reads English text: it runs on both kinds of dump
            for found, _ in self.dev_parts.values():
                found[PLM_ICD] = pl.read_parquet(plm_scores).select(NOTE_ID, SYSTEM, CODE, PLM_ICD)

    def _search(self, notes: pl.DataFrame, split: str, cache: Path | None) -> pl.DataFrame:
        """Search candidates of a split, read from ``cache`` when there (they depend on no training data)."""
        file = cache / f"search_{split}.parquet" if cache else None
        if file is not None and file.is_file():
            return pl.read_parquet(file)
        if self.search is None:
            self.search = OntologySearch().fit(ontology_terms(load_ontology()))
        found = self.search.candidates(notes)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            found.write_parquet(file)
        return found

    def dev_frame(self, sources: tuple[str, ...], *, mode: str = "full") -> pl.DataFrame:
        found, prior = self.dev_parts[mode]
        return with_labels(assemble({n: found[n] for n in sources}, prior=prior), self.dev.codes)

    def alone(self, source: str) -> pl.DataFrame:
        """A source's own score as the ranking, over its own candidates."""
        return self.dev_frame((source,)).filter(pl.col(f"{source}_rank") < 100).with_columns(pl.col(source).alias(SCORE))

    def stacked(self, sources: tuple[str, ...], *, model: str, mode: str = "full", gated: bool = False) -> pl.DataFrame:
        """Protocol a: reranker fitted on out-of-fold train candidates of ``sources``; with
        ``gated``, note gates chosen on a held-out fifth of that frame (``choose_cuts``)."""
        frame = labelled_frame(self.parts[mode], codes=self.train.codes, sources=sources)
        scored = Reranker(model=model).fit(frame).predict(self.dev_frame(sources, mode=mode))
        if gated:
            scored = gate_notes(scored, gates=choose_cuts(frame, reranker=Reranker(model=model), gold=self.train.codes).gates)
        return scored

    def cross_fitted(self, sources: tuple[str, ...], *, model: str, mode: str = "full", gated: bool = False) -> pl.DataFrame:
        """Protocol b: sources fitted on train, reranker cross-fitted over 5 dev folds; gates are
        chosen per fold on the dev notes the fold's reranker was fitted on."""
        frame = self.dev_frame(sources, mode=mode)
        if not gated:
            return cross_fit(frame, reranker=Reranker(model=model))
        notes = frame[NOTE_ID].unique().sort()
        fold = dict(zip(notes.to_list(), fold_ids(notes, folds=5, seed=0).tolist()))
        parts = []
        for k in range(5):
            inside = pl.col(NOTE_ID).replace_strict(fold) == k
            fitted, held = frame.filter(~inside), frame.filter(inside)
            gates = choose_cuts(fitted, reranker=Reranker(model=model), gold=self.dev.codes).gates
            parts.append(gate_notes(Reranker(model=model).fit(fitted).predict(held), gates=gates))
        return pl.concat(parts)


def rows(plm: bool) -> dict[str, tuple[str, dict]]:
    """Row name -> (how it is computed, arguments)."""
    out: dict[str, tuple[str, dict]] = {f"{s} alone": ("alone", {"source": s}) for s in BASE}
    for n in (1, 2, 3):
        for combo in itertools.combinations(BASE, n):
            out["+".join(combo) + " (logistic)"] = ("stacked", {"sources": combo, "model": "logistic"})
    out["lexicon+ontology+tfidf (hgb) = shipped stack"] = ("stacked", {"sources": BASE, "model": "hgb"})
    out["lexicon+ontology+tfidf (hgb) + note gates"] = ("stacked", {"sources": BASE, "model": "hgb", "gated": True})
    out["ontology+tfidf (hgb), English-only dump"] = ("stacked", {"sources": ("ontology", "tfidf"), "model": "hgb", "mode": "text"})
    out["ontology+tfidf (hgb) + note gates, English-only dump"] = (
        "stacked", {"sources": ("ontology", "tfidf"), "model": "hgb", "mode": "text", "gated": True})
    if plm:
        out["plm_icd alone"] = ("alone", {"source": PLM_ICD})
        out["plm_icd (hgb, dev cross-fit)"] = ("cross_fitted", {"sources": (PLM_ICD,), "model": "hgb"})
        out["lexicon+ontology+tfidf (hgb, dev cross-fit)"] = ("cross_fitted", {"sources": BASE, "model": "hgb"})
        out["lexicon+ontology+tfidf+plm_icd (hgb, dev cross-fit)"] = ("cross_fitted", {"sources": (*BASE, PLM_ICD), "model": "hgb"})
        out["lexicon+ontology+tfidf+plm_icd (hgb, dev cross-fit) + note gates"] = (
            "cross_fitted", {"sources": (*BASE, PLM_ICD), "model": "hgb", "gated": True})
        out["ontology+tfidf+plm_icd (hgb, dev cross-fit), English-only dump"] = (
            "cross_fitted", {"sources": ("ontology", "tfidf", PLM_ICD), "model": "hgb", "mode": "text"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plm-scores", type=Path, help="parquet of PLM-ICD dev scores: note_id, system, code, plm_icd")
    parser.add_argument("--plm-model", type=Path, help="PLM-ICD model folder: its dev scores (top 50 per note and system) "
                        "are written to --plm-scores (default: plm_dev_scores.parquet in the temp folder) and used")
    parser.add_argument("--rows", help="';'-separated row names to run (default: all)")
    parser.add_argument("--folds", type=int, default=5, help="out-of-fold folds on train")
    parser.add_argument("--search-cache", type=Path, help="folder for ontology search candidates (reused when present)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()
    if args.plm_model is not None:
        args.plm_scores = args.plm_scores or Path(tempfile.gettempdir()) / "plm_dev_scores.parquet"  # not in the clone
        write_plm_scores(args.plm_model, args.plm_scores)
    ablation = Ablation(folds=args.folds, plm_scores=args.plm_scores, search_cache=args.search_cache)
    plan = rows(args.plm_scores is not None)
    chosen = args.rows.split(";") if args.rows else list(plan)
    unknown = [name for name in chosen if name not in plan]
    if unknown:
        parser.error(f"unknown rows {unknown}; rows are {list(plan)}")
    command = "python benchmarks/accuracy.py" + (f" --plm-model {args.plm_model}" if args.plm_model else
                                                 " --plm-scores PLM_DEV.parquet" if args.plm_scores else "")
    lines = ["| row | MAP CM | MAP PCS | P@5 CM | P@5 PCS | notes ranked CM / PCS | reproduce |",
             "|---|---:|---:|---:|---:|---:|---|"]
    final = None
    for name in chosen:
        how, kwargs = plan[name]
        scored = getattr(ablation, how)(**kwargs)
        m = ranking_metrics(top_codes(scored, score=SCORE), ablation.dev.codes)
        lines.append(f"| {name} | {m['MAP ICD-10-CM']:.3f} | {m['MAP ICD-10-PCS']:.3f} | {m['P@5 ICD-10-CM']:.3f} | "
                     f"{m['P@5 ICD-10-PCS']:.3f} | {m['notes ICD-10-CM']} / {m['notes ICD-10-PCS']} | `{command} --rows '{name}'` |")
        logger.info("%s: %s", name, {k: round(v, 4) for k, v in m.items()})
        if name.endswith("= shipped stack"):
            final = scored
    report = "\n".join(lines)
    if final is not None:
        report += "\n\n" + final_checks(ablation, final)
    report += f"\n\nWall time {time.perf_counter() - started:.0f} s."
    print(report)
    if not args.no_write:
        write_results(report, command)


def write_plm_scores(model: Path, out: Path) -> None:
    """Score the dev notes with a PLM-ICD model folder (``coder.model.scorer``) into ``out``."""
    from coder.model.scorer import load_predictor

    notes = pl.read_parquet(DATA / "dev" / "notes.parquet")
    source = predictor_source(load_predictor(model, device="cpu", rerank=False))  # PLM-ICD alone, not its stack
    pl.concat([source(notes.slice(i, 16)) for i in range(0, notes.height, 16)]).write_parquet(out)


def final_checks(ablation: Ablation, final: pl.DataFrame) -> str:
    """Hierarchy rule, calibration and evidence F1 of the shipped stack on dev."""
    out = []
    for penalty in (0.5, 0.0):
        m = ranking_metrics(top_codes(resolve_hierarchy(final, penalty=penalty), score=SCORE), ablation.dev.codes)
        out.append(f"parent-demotion penalty {penalty}: MAP CM {m['MAP ICD-10-CM']:.3f}, PCS {m['MAP ICD-10-PCS']:.3f}")
    table, ece = calibration(final)
    frame = labelled_frame(ablation.parts["full"], codes=ablation.train.codes, sources=BASE)
    cuts = choose_cuts(frame, reranker=Reranker(model="hgb"), gold=ablation.train.codes).thresholds
    above = final.filter(pl.col(SCORE) >= pl.col(SYSTEM).replace_strict(cuts, return_dtype=pl.Float64))
    f1 = evidence_f1(above, ablation.dev.evidence)
    evidence = "; ".join(f"{s}: F1 {f1[s]:.3f} (P {f1[f'P {s}']:.3f}, R {f1[f'R {s}']:.3f}, cut {cuts[s]:.3f})" for s in SYSTEMS)
    return ("Hierarchy rule (shipped stack; 1.0 = off, the default): " + "; ".join(out) + "\n\n"
            f"Calibration of the shipped stack on dev (all candidates), ECE {ece:.4f}:\n\n{table}\n\n"
            f"Evidence F1 on dev (CodiEsp-X style: code equal and spans overlap; cut = F1-best score chosen on a held-out "
            f"fifth of the out-of-fold train frame): {evidence}")


TITLE = "## Accuracy ablation (CodiEsp dev)"
NOTES = """How to read these tables. Every source is fitted on train only. *alone*: the source's own
score ranks its own candidates. *(logistic)* / *(hgb)*: protocol a, a reranker fitted on
out-of-fold train candidates (5 folds: lexicon and TF-IDF classifier fitted on 4 folds score the
fifth; the ontology search learns nothing from notes), dev never seen. *dev cross-fit*: protocol b,
for PLM-ICD scores that have no out-of-fold train version: sources fitted on train, each dev note
scored by a reranker fitted on the other 4 dev folds. MAP follows CodiEsp's scorer (trectools' get_map:
the mean runs over the notes that have both gold codes of the system and a prediction; 222 of 250 dev
notes have a procedure code). Runs before 13:38 counted a predicted note without gold codes of the
system as AP 0, which the official scorer does not: their PCS figures are lower for that reason alone. *+ note gates*: a (note, system) whose best score is under a
per-system gate gets no codes; gates are chosen on a held-out fifth of the reranker's training
notes (never on the scored notes) by MAP with unranked notes that have gold codes counted as AP 0
(runs before 13:10 counted them as CodiEsp's scorer does, left out, and their gates dropped many
notes that have codes). P@5 is the mean share of gold codes among a note's top 5
over the notes MAP counts. *English-only dump*: notes with only `text`, so no Spanish lexicon. The gated
rows gain partly because the official scorer leaves a note without predictions out of the mean even when it
has gold codes; the shipped model does not gate."""


def write_results(report: str, command: str) -> None:
    """Add this run at the top of the accuracy section (earlier runs stay below it)."""
    results = ROOT / "benchmarks" / "RESULTS.md"
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    heading = (f"### Run of {datetime.date.today()} on {platform.machine()} ({platform.processor() or 'cpu'}, "
               f"{len(os.sched_getaffinity(0))} CPUs): `{command}`")
    if BEGIN not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    section, tail = rest.split(END, 1)
    history = section[section.find("### Run of"):] if "### Run of" in section else ""
    results.write_text(f"{head}{BEGIN}\n{TITLE}\n{NOTES}\n\n{heading}\n\n{report}\n\n{history.strip()}\n{END}{tail}")


if __name__ == "__main__":
    main()
