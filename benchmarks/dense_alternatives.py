"""Cheaper alternatives to the dense search's sentence encoder, each scored as "dense alone".

The dense search (``coder.candidates.dense_search``) embeds every ontology term and every note
sentence with all-MiniLM-L6-v2: a second transformer pass beside PLM-ICD's. Each alternative
replaces that encoder and ranks the first N notes of a split by its own score:

- contextual: the shipped encoder (int8 ONNX, mean pooled), the reference;
- static: one vector per vocabulary token, distilled from the same encoder (the token alone as
  ``[CLS] t [SEP]``), centred; a text is the weighted mean of its tokens' vectors (model2vec's idea).
  The weighting (idf or SIF, from the terms' token frequencies) is chosen by MAP on train notes;
- 3 layers: the encoder truncated to its first three layers;
- PLM-ICD's encoder: the ``encoder.*`` tensors of the model's ``plm_icd/model.safetensors``
  (fp16, read as fp32) in a copy of the shipped encoder folder, each sentence encoded alone;
- PLM-ICD's pass: the same encoder's terms, but a sentence's vector is the mean of the last hidden
  states of its tokens in the pass PLM-ICD already makes (the model's int8 ONNX over the note's
  128-token chunks), so the dense search runs no encoder of its own; its ms/note leaves that pass out
  and its index reuses the row above's term vectors.

Columns: MAP and P@5 per system, recall (gold pairs among the candidates), recall@50 of the gold
codes never seen in train (``metrics`` of benchmarks/accuracy.py), ms per note of the source's
candidates and seconds to embed the ontology's terms (with the encoder's export). Times compare
only within one run. The derived encoders and the cache (``CODER_CACHE_DIR``) live in a temporary
folder: the user's cache is left alone. Prints the table and adds a dated run to this benchmark's
section of benchmarks/RESULTS.md.

    python benchmarks/dense_alternatives.py [--notes 250] [--split dev] [--model models/codiesp-minilm] [--note TEXT]

CodiEsp: CLEF eHealth 2020, Miranda-Escalada et al., CC BY 4.0 (data/codiesp/).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from itertools import chain
from pathlib import Path
from typing import TypeVar
from unittest import mock

import numpy as np
import onnx
import polars as pl
from safetensors.numpy import load_file, save
from scipy import sparse
from transformers import AutoTokenizer

from accuracy import metrics  # benchmarks/: scripts run from this folder
from coder.candidates.dense_search import SENTENCE_TOKENS, TERM_LEVELS, TERM_TOKENS, DenseSearch, quantise
from coder.candidates.ontology_search import TERM, ontology_terms
from coder.candidates.words import sentence_spans
from coder.io.atomic import write_atomically, write_text
from coder.io.corpus import Corpus
from coder.model.chunking import NO_OFFSET, chunk_notes
from coder.model.folder import ONNX_FILES, WEIGHTS_FILE, default_encoder_path, load_tokenizer, read_config
from coder.model.session import create_session
from coder.ontology import load_ontology
from coder.ontology.cache import CACHE_DIR_ENV
from coder.schema import CODE, NOTE_ID, SCORE, SYSTEM, SYSTEMS, TEXT, TEXT_ES
from results import add_run, code_version

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "codiesp"
ONTOLOGY = ROOT / "ontologies" / "codiesp-2018-extras.tsv"
TITLE = "## Cheaper encoders for the dense search, each alone (benchmarks/dense_alternatives.py)"
LAYERS = 3
DISTIL_BATCH = 1024
SIF_A = 1e-3  # SIF's smoothing (Arora et al. 2017): a token of frequency p weighs a / (a + p)
T = TypeVar("T")
COLUMNS = [f"{metric} {system}" for metric in ("MAP", "P@5", "R", "R@50 unseen") for system in SYSTEMS]


class StaticSearch(DenseSearch):
    """The dense search with a text's vector the mean of its tokens' rows of ``table`` ([vocab, dim],
    the weights folded in), scaled to unit length: no encoder pass."""

    def __init__(self, *, table: np.ndarray, **params):
        super().__init__(**params)
        self.table = table

    def _term_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """All terms at once, not cached: the cache's key names the encoder, not the table."""
        vectors, scales = quantise(self._encode(self.terms_[TERM].to_list(), max_length=TERM_TOKENS), levels=TERM_LEVELS)
        return np.ascontiguousarray(vectors.T), scales

    def _encode(self, texts: list[str], *, max_length: int, session=None) -> np.ndarray:
        ids = tokenizer()(texts, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
        summed = _token_counts(ids, len(self.table)) @ self.table
        norms = np.linalg.norm(summed, axis=1, keepdims=True)
        return (summed / np.where(norms > 0, norms, 1)).astype(np.float32)


def note_sentences(text: str) -> tuple[str, ...]:
    """A note's sentences as the dense search cuts them (``PooledSearch``'s keys)."""
    return tuple(text[a:b] for a, b in sentence_spans(text).tolist())


class PooledSearch(DenseSearch):
    """The dense search with each note's sentence vectors given (``pooled``: ``note_sentences`` of a note ->
    [n_sentences, dim] unit vectors); terms through the encoder as usual."""

    def __init__(self, *, pooled: dict[tuple[str, ...], np.ndarray], **params):
        super().__init__(**params)
        self.pooled = pooled

    def _encode(self, texts: list[str], *, max_length: int, session=None) -> np.ndarray:
        if max_length == SENTENCE_TOKENS:
            return self.pooled[tuple(texts)]
        return super()._encode(texts, max_length=max_length, session=session)


def plm_pass(notes: pl.DataFrame, model: Path) -> dict[tuple[str, ...], np.ndarray]:
    """Each note's sentence vectors from PLM-ICD's own pass: its int8 ONNX with the encoder's last hidden
    states as a second output (the output of the graph's last LayerNormalization), each note's chunks in
    one run as ``coder predict`` scores them; a sentence is the mean of its tokens' states, unit length."""
    graph = onnx.load(str(model / ONNX_FILES["int8"]))
    hidden = [node for node in graph.graph.node if node.op_type == "LayerNormalization"][-1].output[0]
    graph.graph.output.append(onnx.helper.make_tensor_value_info(hidden, onnx.TensorProto.FLOAT, None))
    session = create_session(graph.SerializeToString(), device="cpu")
    config = read_config(model)
    texts = notes[TEXT].to_list()
    chunks = chunk_notes(texts, tokenizer=load_tokenizer(model), chunk_len=config.chunk_len, max_chunks=config.max_chunks)
    pooled = {}
    for text, note in zip(texts, chunks, strict=True):
        states = session.run([hidden], {"input_ids": note.input_ids[None], "attention_mask": note.attention_mask[None]})[0]
        states, offsets = states.reshape(-1, states.shape[-1]), note.offsets.reshape(-1, 2)
        spans = sentence_spans(text).tolist()
        rows = np.zeros((len(spans), states.shape[-1]), dtype=np.float32)
        for row, (a, b) in enumerate(spans):
            inside = (offsets[:, 0] != NO_OFFSET) & (offsets[:, 0] >= a) & (offsets[:, 1] <= b)
            if inside.any():
                rows[row] = states[inside].mean(axis=0)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        pooled[tuple(text[a:b] for a, b in spans)] = rows / np.maximum(norms, 1e-12)
    return pooled


def _token_counts(ids: list[list[int]], vocab: int) -> sparse.csr_matrix:
    """[len(ids), vocab]: how often each token occurs in each row of ``ids``."""
    lengths = [len(row) for row in ids]
    flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=sum(lengths))
    return sparse.csr_matrix((np.ones(len(flat), dtype=np.float32), flat, np.cumsum([0, *lengths])), shape=(len(ids), vocab))


def truncated(terms: pl.DataFrame, scratch: Path) -> DenseSearch:
    """The shipped encoder with its first ``LAYERS`` layers (the others' weights are left unread)."""
    folder = _encoder_copy(scratch / f"layers{LAYERS}")
    config = json.loads((folder / "config.json").read_text())
    write_text(folder / "config.json", json.dumps({**config, "num_hidden_layers": LAYERS}), durable=False)
    return DenseSearch(encoder=str(folder)).index(terms)


def plm_encoder(terms: pl.DataFrame, scratch: Path, model: Path, *, search: type[DenseSearch] = DenseSearch,
                **params) -> DenseSearch:
    """PLM-ICD's fine-tuned encoder, its tensors as fp32 under the shipped encoder's names (``search``
    with ``params``: the same encoder's terms, sentence vectors as that search makes them)."""
    folder = scratch / "plm_icd_encoder"
    if not folder.is_dir():
        _encoder_copy(folder)
        tensors = {name.removeprefix("encoder."): tensor.astype(np.float32)
                   for name, tensor in load_file(model / WEIGHTS_FILE).items() if name.startswith("encoder.")}
        write_atomically(folder / "model.safetensors", lambda handle: handle.write(save(tensors)), durable=False)
    return search(encoder=str(folder), **params).index(terms)


@functools.cache
def tokenizer():
    """The shipped encoder's Hugging Face tokenizer (the distilled tables are indexed by its vocabulary)."""
    return AutoTokenizer.from_pretrained(str(default_encoder_path()))


def _encoder_copy(target: Path) -> Path:
    shutil.copytree(default_encoder_path(), target)
    return target


def static_tables(shipped: DenseSearch, terms: pl.DataFrame) -> dict[str, np.ndarray]:
    """Per weighting, [vocab, dim] static token vectors with the weights folded in: each token through
    ``shipped``'s encoder as ``[CLS] t [SEP]``, centred on the tokens the terms use."""
    hf = tokenizer()
    vocab = len(hf)
    parts = []
    for start in range(0, vocab, DISTIL_BATCH):
        ids = np.arange(start, min(vocab, start + DISTIL_BATCH))
        rows = np.stack([np.full_like(ids, hf.cls_token_id), ids, np.full_like(ids, hf.sep_token_id)], axis=1)
        parts.append(shipped.session_.run(None, {"input_ids": rows, "attention_mask": np.ones_like(rows)})[0])
    vectors = np.concatenate(parts)
    ids = hf(terms[TERM].to_list(), add_special_tokens=False, truncation=True, max_length=TERM_TOKENS)["input_ids"]
    frequency = np.asarray((_token_counts(ids, vocab) > 0).sum(axis=0)).ravel()  # terms holding each token
    vectors -= vectors[frequency > 0].mean(axis=0)
    share = frequency / frequency.sum()
    weights = {"idf": np.log((len(ids) + 1) / (frequency + 1)) + 1, "SIF": SIF_A / (SIF_A + share)}
    return {name: (vectors * weight[:, None]).astype(np.float32) for name, weight in weights.items()}


def mean_map(search: DenseSearch, corpus: Corpus) -> float:
    """MAP on ``corpus``, averaged over the systems."""
    found = metrics(_ranked(search, corpus.notes), corpus.codes, set())
    return float(np.mean([found[f"MAP {system}"] for system in SYSTEMS]))


def evaluate(search: DenseSearch, built_s: float, corpus: Corpus, unseen: set[tuple[str, str]]) -> dict[str, float]:
    """``search``'s metrics on ``corpus``, ms per note of its candidates, and ``built_s``."""
    _ranked(search, corpus.notes.head(1))  # first calls pay one-time set-up: kept out of the timing
    tick = time.perf_counter()
    ranked = _ranked(search, corpus.notes)
    per_note = 1000 * (time.perf_counter() - tick) / corpus.notes.height
    print(f"{built_s:.0f} s to build, {per_note:.1f} ms/note", file=sys.stderr, flush=True)
    return {**metrics(ranked, corpus.codes, unseen), "ms/note": per_note, "index s": built_s}


def _ranked(search: DenseSearch, notes: pl.DataFrame) -> pl.DataFrame:
    return search.candidates(notes.select(NOTE_ID, TEXT)).with_columns(pl.col(search.name).alias(SCORE))


def timed(build: Callable[[], T]) -> tuple[T, float]:
    tick = time.perf_counter()
    return build(), time.perf_counter() - tick


def table(rows: dict[str, dict[str, float]]) -> str:
    short = [column.replace("ICD-10-", "") for column in [*COLUMNS, "ms/note", "index s"]]
    lines = ["| encoder | " + " | ".join(short) + " |", "|---|" + "---:|" * len(short)]
    for name, found in rows.items():
        cells = [f"{found[column]:.3f}" for column in COLUMNS] + [f"{found['ms/note']:.1f}", f"{found['index s']:.0f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=250, help="The split's first N notes (and train's, to choose the static weighting).")
    parser.add_argument("--split", default="dev", help="The CodiEsp split scored (data/codiesp/SPLIT).")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "codiesp-minilm", help="Model folder of PLM-ICD's encoder.")
    parser.add_argument("--note", default="", help="Free text recorded with the run (e.g. other load on the machine).")
    args = parser.parse_args()
    read = {split: Corpus.read(DATA / split / "notes.parquet", DATA / split / "codes.parquet", text_columns=[TEXT],
                               optional=[TEXT_ES]) for split in {"train", args.split}}
    corpus, train = (read[split].subset(read[split].notes[NOTE_ID].head(args.notes)) for split in (args.split, "train"))
    unseen = {(s, c) for s, c in corpus.codes.select(SYSTEM, CODE).iter_rows()} - \
        {(s, c) for s, c in read["train"].codes.select(SYSTEM, CODE).iter_rows()}
    terms = ontology_terms(load_ontology(ONTOLOGY))
    load, commit = os.getloadavg()[0], code_version()  # at the start: the code this run imported
    with tempfile.TemporaryDirectory() as folder, mock.patch.dict(os.environ, {CACHE_DIR_ENV: str(Path(folder) / "cache")}):
        scratch = Path(folder)
        shipped, seconds = timed(lambda: DenseSearch().index(terms))
        rows = {"contextual (shipped)": evaluate(shipped, seconds, corpus, unseen)}
        tables, distil_s = timed(lambda: static_tables(shipped, terms))
        on_train = {name: mean_map(StaticSearch(table=vectors).index(terms), train) for name, vectors in tables.items()}
        weighting = max(on_train, key=on_train.__getitem__)
        rows[f"static ({weighting})"] = evaluate(*timed(lambda: StaticSearch(table=tables[weighting]).index(terms)), corpus, unseen)
        rows[f"{LAYERS} layers"] = evaluate(*timed(lambda: truncated(terms, scratch)), corpus, unseen)
        rows["PLM-ICD's encoder"] = evaluate(*timed(lambda: plm_encoder(terms, scratch, args.model)), corpus, unseen)
        pooled = plm_pass(corpus.notes, args.model)  # the term vectors of the row above: from the cache
        rows["PLM-ICD's pass"] = evaluate(*timed(lambda: plm_encoder(terms, scratch, args.model, search=PooledSearch,
                                                                     pooled=pooled)), corpus, unseen)
    command = shlex.join(["python", "benchmarks/dense_alternatives.py", *sys.argv[1:]])
    section = "\n".join([
        f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"`{command}` on {platform.machine()} ({os.cpu_count()} CPUs), commit {commit}: the first {corpus.notes.height} "
        f"{args.split} notes, {terms.height:,} terms; load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at "
        f"the end.{' ' + args.note if args.note else ''}", "", table(rows), "",
        f"Static vectors distilled in {distil_s:.0f} s; weighting chosen by MAP (mean of both systems) on the first "
        f"{train.notes.height} train notes: " + ", ".join(f"{name} {value:.3f}" for name, value in on_train.items()) + ".", ""])
    add_run("dense-alternatives", title=TITLE, section=section)
    print(section)


if __name__ == "__main__":
    main()
