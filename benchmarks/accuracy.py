"""Dev ablation on CodiEsp: each candidate source alone and added one at a time, on every kind of dump.

Every source is the product's (``coder.train.stacking.default_sources``). As ``coder train`` ships
them fitted on train and dev, each dev note is scored by sources fitted on train and the other
four of 5 dev folds (``coder.train.stacking.dev_folds``); the word aligners that project the
Spanish spans onto English see train and the unlabelled background notes, never dev. Rows without
PLM-ICD: rerankers fitted on out-of-fold train candidates (5 folds). Rows with PLM-ICD
(``--plm-model``): its dev scores, rerankers cross-fitted over the same 5 dev folds (each dev note
scored by a reranker fitted on the other four, with the candidates of the sources fitted on train,
and on the out-of-fold train candidates, where PLM-ICD's features are missing; PLM-ICD's epoch was
chosen on dev). Columns:
CodiEsp MAP and P@5 per system (mean over the notes with gold codes and a prediction), recall@50 of the dev gold codes never seen in train, and each source's own time per
note on dev (fitted on train). Also: CodiEsp-X-style evidence F1 of the full model on both text columns (English
against the dev spans projected by the same aligners). Prints the tables and adds a dated run to
this benchmark's section of benchmarks/RESULTS.md.

    python benchmarks/accuracy.py [--plm-model models/NAME] [--folds 5] [--sentence-encoder PATH] [--sentence-layers FILE]
        [--reranker '{"max_leaf_nodes": 31}'] [--without SOURCE ...] [--no-write]

CodiEsp: CLEF eHealth 2020, Miranda-Escalada et al., CC BY 4.0 (data/codiesp/).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import time
from pathlib import Path

import polars as pl
from sklearn.base import clone

from coder.candidates.features import ABSENT_RANK, code_prior, with_labels
from coder.candidates.stack import CandidateStack
from coder.io.corpus import Corpus, read_notes
from coder.metrics import gold_sets, rankings, system_scores
from coder.ontology import load_ontology
from coder.rerank.reranker import MODELS, Reranker
from coder.schema import CODE, NOTE_ID, PLM_ICD, SCORE, SPAN_OFFSETS, SYSTEM, SYSTEMS, TEXT, TEXT_ES
from coder.train.projection import fit_aligners, project_spans
from coder.train.stacking import cross_fit, default_sources, dev_folds, labelled_frame, train_folds
from results import code_version  # benchmarks/results.py: scripts run from this folder

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "codiesp"
BEGIN, END = "<!-- accuracy: begin -->", "<!-- accuracy: end -->"
logger = logging.getLogger("accuracy")


def metrics(scored: pl.DataFrame, gold: pl.DataFrame, unseen: set[tuple[str, str]]) -> dict[str, float]:
    """MAP and P@5 per system, recall of the gold (note, code) pairs among all the candidates (at any
    rank: what no reranking can pass), and recall@50 of the gold pairs whose code train never had."""
    truth, ranked = gold_sets(gold), rankings(scored, score=SCORE)
    out: dict[str, float] = {}
    for system, found in system_scores(ranked, truth).items():
        out[f"MAP {system}"], out[f"P@5 {system}"] = found.map, found.precision_at[5]
        pairs = [(note, code) for note, codes in truth.get(system, {}).items() for code in codes]
        proposed = {note: set(codes) for note, codes in ranked.get(system, {}).items()}
        out[f"R {system}"] = sum(code in proposed.get(note, ()) for note, code in pairs) / max(len(pairs), 1)
        pairs = [(note, code) for note, code in pairs if (system, code) in unseen]
        top = {note: set(codes[:50]) for note, codes in ranked.get(system, {}).items()}
        out[f"R@50 unseen {system}"] = sum(code in top.get(note, ()) for note, code in pairs) / max(len(pairs), 1)
    return out


def evidence_f1(predicted: pl.DataFrame, evidence: pl.DataFrame) -> dict[str, float]:
    """CodiEsp-X-style F1 per system. A predicted (note, code, start, end) is a true positive when
    the note has that gold code and one of its gold evidence spans (any piece of a discontinuous
    span) overlaps [start, end); a gold (note, code, span) is found when some true positive
    overlaps it. Precision = true positives / predictions, recall = found / gold spans."""
    pieces = evidence.filter(pl.col(SPAN_OFFSETS).is_not_null()).with_row_index("span").with_columns(
        pl.col(SPAN_OFFSETS).str.split(";")).explode(SPAN_OFFSETS)
    pieces = pieces.with_columns(pl.col(SPAN_OFFSETS).str.split(" ").list.eval(pl.element().cast(pl.Int64)).alias("o")).select(
        NOTE_ID, SYSTEM, CODE, "span", pl.col("o").list.get(0).alias("g_start"), pl.col("o").list.get(1).alias("g_end"))
    pred = predicted.select(NOTE_ID, SYSTEM, CODE, "evidence_start", "evidence_end").with_row_index("pred")
    hits = pred.join(pieces, on=[NOTE_ID, SYSTEM, CODE]).filter(
        (pl.col("evidence_start") < pl.col("g_end")) & (pl.col("g_start") < pl.col("evidence_end")))
    out = {}
    for system in SYSTEMS:
        n_pred = pred.filter(pl.col(SYSTEM) == system).height
        n_gold = pieces.filter(pl.col(SYSTEM) == system)["span"].n_unique()
        tp = hits.filter(pl.col(SYSTEM) == system)["pred"].n_unique()
        found = hits.filter(pl.col(SYSTEM) == system)["span"].n_unique()
        p, r = tp / max(n_pred, 1), found / max(n_gold, 1)
        out[system] = 2 * p * r / (p + r) if p + r else 0.0
        out[f"P {system}"], out[f"R {system}"] = p, r
    return out


class Ablation:
    """What the rows share: corpora, projected spans, out-of-fold train parts and dev frames per dump kind."""

    DUMPS = {"full": (TEXT, TEXT_ES), "English-only": (TEXT,)}

    def __init__(self, *, folds: int, plm_model: Path | None, sentence_encoder: Path | None = None,
                 sentence_layers: Path | None = None, reranker: Reranker | None = None, without: tuple[str, ...] = ()):
        self.reranker = reranker or Reranker()
        read = {name: Corpus.read(DATA / name / "notes.parquet", DATA / name / "codes.parquet", DATA / name / "evidence.parquet",
                                  text_columns=[TEXT], optional=[TEXT_ES]) for name in ("train", "dev")}
        background = read_notes(DATA / "background" / "notes.parquet", text_columns=[TEXT], optional=[TEXT_ES])
        started = time.perf_counter()
        sentences, words = fit_aligners(pl.concat([read["train"].notes, background.select(read["train"].notes.columns)]))
        self.projected = {name: project_spans(c.notes, c.spans(TEXT_ES), sentences, words) for name, c in read.items()}
        self.train = read["train"].with_spans(self.projected["train"], column=TEXT)
        self.dev = read["dev"]
        logger.info("spans projected onto English in %.0f s", time.perf_counter() - started)
        self.unseen = {(s, c) for s, c in self.dev.codes.select(SYSTEM, CODE).iter_rows()} - \
            {(s, c) for s, c in self.train.codes.select(SYSTEM, CODE).iter_rows()}
        self.ontology = load_ontology(DATA.parents[1] / "ontologies" / "codiesp-2018-extras.tsv")
        sources = [source for source in default_sources(sentence_encoder=sentence_encoder, sentence_layers=sentence_layers)
                   if source.name not in without]
        self.stack = CandidateStack(tuple(sources)).fit(self.train, ontology=self.ontology)
        self.order = list(self.stack.names)
        self.ms_per_note, dev_found = {}, {}
        for source in self.stack.sources:  # each source's dev candidates once, timed
            tick = time.perf_counter()
            dev_found[source.name] = source.candidates(self.dev.notes.select(NOTE_ID, source.text_column))
            self.ms_per_note[source.name] = 1000 * (time.perf_counter() - tick) / self.dev.notes.height
        known = self.stack.fitted_once().candidates(self.train.notes)
        self.parts = {}
        for dump, columns in self.DUMPS.items():
            train = Corpus(self.train.notes.select(NOTE_ID, *columns), self.train.codes, self.train.evidence)
            self.parts[dump] = train_folds(self.stack.usable(columns), train, ontology=self.ontology, known=known, folds=folds)
        self.plm = None
        if plm_model is not None:
            from coder.assembly import load_model
            from coder.rerank.score import STACK_PLM_TOP_K

            scorer = load_model(plm_model, device="cpu").scorer
            tick = time.perf_counter()
            self.plm = scorer.score(self.dev.notes, top_n=STACK_PLM_TOP_K)
            self.ms_per_note[PLM_ICD] = 1000 * (time.perf_counter() - tick) / self.dev.notes.height
        self.dev_parts, self.backfill_ms = {}, {}
        for dump, columns in self.DUMPS.items():  # the timed candidates with PLM-ICD's, backfilled as in the pipeline
            tick = time.perf_counter()
            self.dev_parts[dump] = self.stack.usable(columns).frames(self.dev.notes.select(NOTE_ID, *columns), plm=self.plm,
                                                                     known=dev_found)
            self.backfill_ms[dump] = 1000 * (time.perf_counter() - tick) / self.dev.notes.height
        self.held_parts = self.refitted_parts()
        self.prior = code_prior(self.train.codes)

    def refitted_parts(self) -> dict[str, dict[str, pl.DataFrame]]:
        """Per dump kind, each source's backfilled dev candidates, every dev fold's from the sources
        refitted on train and the other folds (``dev_folds``), PLM-ICD's as they are."""
        dev = self.dev.with_spans(self.projected["dev"], column=TEXT)
        parts: dict[str, dict[str, list[pl.DataFrame]]] = {dump: {} for dump in self.DUMPS}
        for held, _, refitted in dev_folds(self.stack, train=self.train, dev=dev, ontology=self.ontology):
            found = refitted.candidates(held.notes)  # once for every dump
            for dump, columns in self.DUMPS.items():
                frames = refitted.usable(columns).frames(held.notes.select(NOTE_ID, *columns), plm=self.plm, known=found)
                for name, frame in frames.items():
                    parts[dump].setdefault(name, []).append(frame)
        return {dump: {name: pl.concat(frames, how="diagonal_relaxed") for name, frames in by_name.items()}
                for dump, by_name in parts.items()}

    def dev_frame(self, sources: tuple[str, ...], dump: str, *, held: bool = True) -> pl.DataFrame:
        """Labelled dev candidates of ``sources``: from the sources refitted without the note's fold
        (``held``), or from those fitted on train (what the rerankers over PLM-ICD learn from)."""
        parts = self.held_parts if held else self.dev_parts
        frames = {n: parts[dump][n] for n in sources}
        return with_labels(self.stack.features(frames, prior=self.prior, plm=self.plm), self.dev.codes)

    def alone(self, source: str) -> pl.DataFrame:
        """A source's own score as the ranking, over its own candidates."""
        dump = next(d for d in self.DUMPS if source in self.dev_parts[d])
        frame = self.dev_frame((source,), dump)
        return frame.filter(pl.col(f"{source}_rank") < ABSENT_RANK).with_columns(pl.col(source).alias(SCORE))

    def reranked(self, sources: tuple[str, ...], dump: str) -> pl.DataFrame:
        """Without PLM-ICD: a reranker fitted on out-of-fold train candidates. With it: cross-fitted on dev,
        each fold's reranker also fitted on the out-of-fold train candidates (PLM-ICD's features missing)."""
        train = labelled_frame(self.stack, self.parts[dump], codes=self.train.codes, sources=[n for n in sources if n != PLM_ICD])
        if PLM_ICD in sources:
            return cross_fit(self.dev_frame(sources, dump, held=False), reranker=self.reranker, extra_rows=train,
                             held_out=self.dev_frame(sources, dump))
        return clone(self.reranker).fit(train).predict(self.dev_frame(sources, dump))


def plan(ablation: Ablation) -> list[tuple[str, str, dict]]:
    """(row name, Ablation method, arguments), in reading order."""
    rows = [(f"{name} alone", "alone", {"source": name}) for name in [*ablation.order, *([PLM_ICD] if PLM_ICD in
                                                                                          ablation.dev_parts["full"] else [])]]
    for dump in ablation.DUMPS:
        names = [n for n in ablation.order if n in ablation.dev_parts[dump]]
        for k in range(1, len(names) + 1):
            rows.append((f"{dump}: {'+'.join(names[:k])} (reranked, out-of-fold train)", "reranked",
                         {"sources": tuple(names[:k]), "dump": dump}))
        if PLM_ICD in ablation.dev_parts[dump]:
            rows.append((f"{dump}: {'+'.join(names)}+plm_icd (reranked, dev cross-fit)", "reranked",
                         {"sources": (*names, PLM_ICD), "dump": dump}))
    spanless = tuple(n for n in ablation.order if n in ablation.dev_parts["English-only"] and not n.startswith("lexicon"))
    if PLM_ICD in ablation.dev_parts["full"]:
        rows.append((f"notes and codes only (English, no spans): {'+'.join(spanless)}+plm_icd (reranked, dev cross-fit)",
                     "reranked", {"sources": (*spanless, PLM_ICD), "dump": "English-only"}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plm-model", type=Path, help="model folder whose PLM-ICD dev scores join the rows")
    parser.add_argument("--folds", type=int, default=5, help="out-of-fold folds on train")
    parser.add_argument("--sentence-encoder", type=Path,
                        help="the dense search's encoder folder (default: the packaged all-MiniLM-L6-v2), e.g. one "
                             "written by benchmarks/finetune_sentence_encoder.py")
    parser.add_argument("--sentence-layers", type=Path,
                        help="a layers file whose student encodes the dense search's note sentences, e.g. the one "
                             "coder train distilled into models/codiesp-minilm/sources/dense/sentence_layers.safetensors "
                             "(from the train and background notes, never dev's)")
    parser.add_argument("--reranker", type=json.loads, default={},
                        help="JSON of coder.rerank.reranker.Reranker parameters for every reranked row, e.g. "
                             "'{\"max_leaf_nodes\": 31}' (default: its defaults, those coder train uses)")
    parser.add_argument("--without", action="append", default=[], choices=[s.name for s in default_sources()],
                        help="leave this candidate source out of every row (repeatable): the last rows then price it, "
                             "against a run without --without")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    commit = code_version()  # at the start: the code this run imports
    try:  # a wrong setting fails here, not after the sources have been fitted
        reranker = Reranker(**args.reranker)
    except TypeError as error:
        parser.error(f"--reranker: {error}")
    if reranker.model not in MODELS:
        parser.error(f"--reranker: model must be one of {MODELS}, got {reranker.model!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()
    ablation = Ablation(folds=args.folds, plm_model=args.plm_model, sentence_encoder=args.sentence_encoder,
                        sentence_layers=args.sentence_layers, reranker=reranker, without=tuple(args.without))
    command = "python benchmarks/accuracy.py" + (f" --plm-model {args.plm_model}" if args.plm_model else "") + (
        f" --sentence-encoder {args.sentence_encoder}" if args.sentence_encoder else "") + (
        f" --sentence-layers {args.sentence_layers}" if args.sentence_layers else "") + (
        f" --reranker '{json.dumps(args.reranker)}'" if args.reranker else "") + "".join(
        f" --without {name}" for name in args.without)
    lines = ["| row | MAP CM | MAP PCS | P@5 CM | P@5 PCS | recall CM | recall PCS | R@50 unseen CM | R@50 unseen PCS | ms/note |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    scored = {}
    for name, how, kwargs in plan(ablation):
        scored[name] = getattr(ablation, how)(**kwargs)
        m = metrics(scored[name], ablation.dev.codes, ablation.unseen)
        ms = ablation.ms_per_note.get(kwargs.get("source"), None)
        lines.append(f"| {name} | " + " | ".join(f"{m[f'{k} {s}']:.3f}" for k in ("MAP", "P@5", "R", "R@50 unseen") for s in SYSTEMS)
                     + f" | {f'{ms:.1f}' if ms is not None else ''} |")
        logger.info("%s: %s", name, {k: round(v, 4) for k, v in m.items()})
    backfilled = ", ".join(f"{dump} {ms:.1f}" for dump, ms in ablation.backfill_ms.items())
    report = "\n".join(lines) + "\n\n" + unseen_line(ablation) + "\n\n" + gold_rank_lines(ablation, scored) + "\n\n" + (
        f"Backfill (the ontology searches and the term match scoring every source's candidates of the dev notes, "
        f"`coder.candidates.backfill`), "
        f"ms/note: {backfilled}.\n\n") + evidence_lines(ablation, scored)
    report += f"\n\nWall time {time.perf_counter() - started:.0f} s."
    print(report)
    if not args.no_write:
        write_results(report, command, commit=commit)


def unseen_line(ablation: Ablation) -> str:
    """The share of the dev gold (note, code) pairs whose code train never had, per system."""
    pairs = ablation.dev.codes.select(NOTE_ID, SYSTEM, CODE).unique()
    unseen = pl.DataFrame(sorted(ablation.unseen), schema={SYSTEM: pl.String, CODE: pl.String}, orient="row")
    new = pairs.join(unseen, on=[SYSTEM, CODE])  # typed: an empty set still joins
    shares = "; ".join(f"{s} {new.filter(pl.col(SYSTEM) == s).height / max(pairs.filter(pl.col(SYSTEM) == s).height, 1):.3f}"
                       for s in SYSTEMS)
    return f"Dev gold (note, code) pairs whose code never occurs in train: {shares}."


RANK_BANDS = {"1-5": 5, "6-20": 20, "21-50": 50, ">50": None}
"""Band name -> the last rank it holds (None: every rank below the last band)."""
NOT_PROPOSED = "not proposed"


def gold_ranks(scored: pl.DataFrame, gold: pl.DataFrame, unseen: set[tuple[str, str]]) -> dict[tuple[str, bool, str], int]:
    """(system, code unseen in train, band of RANK_BANDS or NOT_PROPOSED) -> how many dev gold (note, code)
    pairs the ranking (``metrics``' own, ``coder.metrics.rankings``) puts there."""
    truth, ranked = gold_sets(gold), rankings(scored, score=SCORE)
    counts: dict[tuple[str, bool, str], int] = {}
    for system, notes in truth.items():
        for note, codes in notes.items():
            order = {code: rank for rank, code in enumerate(ranked.get(system, {}).get(note, []), start=1)}
            for code in codes:
                rank = order.get(code)
                band = NOT_PROPOSED if rank is None else next(b for b, last in RANK_BANDS.items() if last is None or rank <= last)
                key = (system, (system, code) in unseen, band)
                counts[key] = counts.get(key, 0) + 1
    return counts


def last_row(scored: dict[str, pl.DataFrame], dump: str) -> str:
    """The name of the last row of ``dump`` (the one with every source it allows)."""
    return [n for n in scored if n.startswith(f"{dump}:")][-1]


def gold_rank_lines(ablation: Ablation, scored: dict[str, pl.DataFrame]) -> str:
    """Where the last full-dump row ranks the dev gold pairs: what bounds its MAP (codes never proposed,
    codes proposed too low), for codes train had and codes it never had."""
    name = last_row(scored, "full")
    counts = gold_ranks(scored[name], ablation.dev.codes, ablation.unseen)
    bands = [*RANK_BANDS, NOT_PROPOSED]
    out = [f"Where {name} ranks the dev gold (note, code) pairs (rank within the note and system):", "",
           "| system | code in train | " + " | ".join(bands) + " |", "|---|---|" + "---:|" * len(bands)]
    for system in SYSTEMS:
        for new in (False, True):
            out.append(f"| {system} | {'no' if new else 'yes'} | "
                       + " | ".join(str(counts.get((system, new, band), 0)) for band in bands) + " |")
    return "\n".join(out)


def evidence_lines(ablation: Ablation, scored: dict[str, pl.DataFrame]) -> str:
    """Evidence F1 of the last full and English-only rows, on their evidence columns."""
    out = []
    for dump, column, gold in (("full", TEXT_ES, ablation.dev.spans(TEXT_ES)), ("English-only", TEXT, ablation.projected["dev"])):
        name = last_row(scored, dump)
        frame = scored[name]
        cuts = {system: 0.5 for system in SYSTEMS}  # the evidence of the codes the model is at least even about
        above = frame.filter(pl.col(SCORE) >= pl.col(SYSTEM).replace_strict(cuts, return_dtype=pl.Float64))
        if "evidence_column" in above.columns:
            above = above.filter(pl.col("evidence_column") == column)
        f1 = evidence_f1(above, gold)
        out.append(f"- {name}, evidence into `{column}`: " + "; ".join(
            f"{s}: F1 {f1[s]:.3f} (P {f1[f'P {s}']:.3f}, R {f1[f'R {s}']:.3f})" for s in SYSTEMS))
    return "Evidence F1 on dev (CodiEsp-X style: code equal and spans overlap; codes scored at least 0.5):\n" + "\n".join(out)


TITLE = "## Accuracy ablation (CodiEsp dev)"
NOTES = """How to read these tables. Every source is fitted on train only (the word aligners that project the
Spanish spans onto English on train + background notes). *alone*: the source's own score ranks its own
candidates. *(reranked, out-of-fold train)*: a reranker fitted on out-of-fold train candidates (5 folds),
dev never seen. *(reranked, dev cross-fit)*: for PLM-ICD scores, which have no out-of-fold train version:
each dev note scored by a reranker fitted on the other 4 dev folds and on the out-of-fold train candidates
(PLM-ICD's features missing there; runs before 2026-12-01 fitted on the 4 dev folds alone). MAP follows
CodiEsp's scorer (trectools' get_map: the mean runs over the notes that have both gold codes of the system and a
prediction). P@5 over the notes MAP counts. recall (runs from 2026-12-01 06:31 UTC on): share of the dev gold
(note, code) pairs among the row's candidates at any rank, the most a reranking can reach. R@50 unseen: share of the dev gold (note, code) pairs whose
code never occurs in train that the ranking's top 50 holds. ms/note: the source's own candidates on the
250 dev notes, this machine, this run. *full*: `text` and `text_es`; *English-only*: `text` alone."""


def write_results(report: str, command: str, *, commit: str) -> None:
    """Add this run at the top of the accuracy section (earlier runs stay below it)."""
    results = ROOT / "benchmarks" / "RESULTS.md"
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    heading = (f"### Run of {datetime.date.today()} on {platform.machine()} ({platform.processor() or 'cpu'}, "
               f"{len(os.sched_getaffinity(0))} CPUs), commit {commit}: `{command}`")
    if BEGIN not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    section, tail = rest.split(END, 1)
    history = section[section.find("### Run of"):] if "### Run of" in section else ""
    results.write_text(f"{head}{BEGIN}\n{TITLE}\n{NOTES}\n\n{heading}\n\n{report}\n\n{history.strip()}\n{END}{tail}")


if __name__ == "__main__":
    main()
