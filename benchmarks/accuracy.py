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

import polars as pl

from coder.candidates.features import LABEL, PLM_ICD, assemble, code_prior, with_labels
from coder.candidates.ontology_search import OntologySearch
from coder.io.corpus import Corpus
from coder.metrics import gold_sets, rankings, ranking_scores
from coder.ontology import load_ontology
from coder.rerank.reranker import Reranker
from coder.schema import CODE, EVIDENCE_OFFSETS, NOTE_ID, SCORE, SYSTEM, SYSTEMS, TEXT, TEXT_ES
from coder.train.stacking import cross_fit, default_sources, fit_sources, labelled_frame, out_of_fold, source_frames

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "codiesp"
BEGIN, END = "<!-- accuracy: begin -->", "<!-- accuracy: end -->"
BASE = ("lexicon", "ontology", "tfidf")
logger = logging.getLogger("accuracy")


def ranking_metrics(ranked: dict[str, dict[str, list[str]]], gold: pl.DataFrame) -> dict[str, float]:
    """MAP (official CodiEsp rules), P@5 (mean over the notes MAP counts) and how many notes were ranked, per system."""
    truth = gold_sets(gold)
    out = {}
    for system in SYSTEMS:
        scores = ranking_scores(ranked.get(system, {}), truth.get(system, {}), ks=(5,))
        out[f"MAP {system}"], out[f"P@5 {system}"], out[f"notes {system}"] = scores.map, scores.precision_at[5], scores.notes
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
        read = {name: Corpus.read(DATA / name / "notes.parquet", DATA / name / "codes.parquet", DATA / name / "evidence.parquet",
                                  text_columns=[TEXT], optional=[TEXT_ES]) for name in ("train", "dev")}
        self.train, self.dev = read["train"], read["dev"]
        started = time.perf_counter()
        self.ontology = load_ontology()
        self.search: OntologySearch | None = None  # fitted only when the cache lacks a split
        known = {split: {"ontology": self._search(corpus.notes, split, search_cache)} for split, corpus in read.items()}
        logger.info("ontology search ready in %.0f s", time.perf_counter() - started)
        learners = [source for source in default_sources() if source.learns_from_notes]
        self.parts, self.dev_parts = {}, {}
        for mode, train, dev in (("full", self.train, self.dev), ("text", self.train.text_only(TEXT), self.dev.text_only(TEXT))):
            usable = [s for s in default_sources() if s.text_column in train.notes.columns]
            self.parts[mode] = out_of_fold(train, sources=usable, ontology=self.ontology, known=known["train"], folds=folds)
            fitted = fit_sources(learners, train, ontology=self.ontology)
            ordered = [next((f for f in fitted if f.name == s.name), s) for s in usable]
            self.dev_parts[mode] = (source_frames(ordered, dev.notes, known=known["dev"]), code_prior(train.codes))
        if plm_scores is not None:  # PLM-ICD reads English text: it runs on both kinds of dump
            for found, _ in self.dev_parts.values():
                found[PLM_ICD] = pl.read_parquet(plm_scores).select(NOTE_ID, SYSTEM, CODE, PLM_ICD)

    def _search(self, notes: pl.DataFrame, split: str, cache: Path | None) -> pl.DataFrame:
        """Search candidates of a split, read from ``cache`` when there (they depend on no training data)."""
        file = cache / f"search_{split}.parquet" if cache else None
        if file is not None and file.is_file():
            return pl.read_parquet(file)
        if self.search is None:
            self.search = OntologySearch().fit(ontology=self.ontology)
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

    def stacked(self, sources: tuple[str, ...], *, model: str, mode: str = "full") -> pl.DataFrame:
        """Protocol a: reranker fitted on out-of-fold train candidates of ``sources``."""
        frame = labelled_frame(self.parts[mode], codes=self.train.codes, sources=sources)
        return Reranker(model=model).fit(frame).predict(self.dev_frame(sources, mode=mode))

    def cross_fitted(self, sources: tuple[str, ...], *, model: str, mode: str = "full") -> pl.DataFrame:
        """Protocol b: sources fitted on train, reranker cross-fitted over 5 dev folds."""
        return cross_fit(self.dev_frame(sources, mode=mode), reranker=Reranker(model=model))


def rows(plm: bool) -> dict[str, tuple[str, dict]]:
    """Row name -> (how it is computed, arguments)."""
    out: dict[str, tuple[str, dict]] = {f"{s} alone": ("alone", {"source": s}) for s in BASE}
    for n in (1, 2, 3):
        for combo in itertools.combinations(BASE, n):
            out["+".join(combo) + " (logistic)"] = ("stacked", {"sources": combo, "model": "logistic"})
    out["lexicon+ontology+tfidf (hgb) = shipped stack"] = ("stacked", {"sources": BASE, "model": "hgb"})
    out["ontology+tfidf (hgb), English-only dump"] = ("stacked", {"sources": ("ontology", "tfidf"), "model": "hgb", "mode": "text"})
    if plm:
        out["plm_icd alone"] = ("alone", {"source": PLM_ICD})
        out["plm_icd (hgb, dev cross-fit)"] = ("cross_fitted", {"sources": (PLM_ICD,), "model": "hgb"})
        out["lexicon+ontology+tfidf (hgb, dev cross-fit)"] = ("cross_fitted", {"sources": BASE, "model": "hgb"})
        out["lexicon+ontology+tfidf+plm_icd (hgb, dev cross-fit)"] = ("cross_fitted", {"sources": (*BASE, PLM_ICD), "model": "hgb"})
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
        m = ranking_metrics(rankings(scored, score=SCORE), ablation.dev.codes)
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
    """PLM-ICD's candidates (top 50 per note and system, as the rerankers read them) for the dev notes into ``out``."""
    from coder.model.load import load_model
    from coder.rerank.score import STACK_PLM_TOP_K

    notes = pl.read_parquet(DATA / "dev" / "notes.parquet")
    scorer = load_model(model, device="cpu").scorer
    frames = [scorer.score(notes.slice(i, 16), top_n=STACK_PLM_TOP_K).candidates for i in range(0, notes.height, 16)]
    pl.concat(frames).write_parquet(out)


def final_checks(ablation: Ablation, final: pl.DataFrame) -> str:
    """Calibration and evidence F1 of the shipped stack on dev."""
    table, ece = calibration(final)
    frame = labelled_frame(ablation.parts["full"], codes=ablation.train.codes, sources=BASE)
    cuts = Reranker(model="hgb").fit(frame, gold=ablation.train.codes).thresholds_
    above = final.filter(pl.col(SCORE) >= pl.col(SYSTEM).replace_strict(cuts, return_dtype=pl.Float64))
    f1 = evidence_f1(above, ablation.dev.evidence)
    evidence = "; ".join(f"{s}: F1 {f1[s]:.3f} (P {f1[f'P {s}']:.3f}, R {f1[f'R {s}']:.3f}, cut {cuts[s]:.3f})" for s in SYSTEMS)
    return (f"Calibration of the shipped stack on dev (all candidates), ECE {ece:.4f}:\n\n{table}\n\n"
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
system as AP 0, which the official scorer does not: their PCS figures are lower for that reason alone. P@5 is
the mean share of gold codes among a note's top 5 over the notes MAP counts. *English-only dump*: notes with
only `text`, so no Spanish lexicon. Earlier runs also had *note gates* rows (dropped 2026-11-30 with the gates)."""


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
