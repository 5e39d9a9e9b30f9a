"""The distilled sentence layers of the dense search (``coder train --sentence-layers``), scored as "dense alone".

The dense search's encoder (all-MiniLM-L6-v2, 6 layers) costs about as much as PLM-ICD's pass
(``benchmarks/throughput.py``), and cutting it to its first layers loses nearly all of the search's value
(``benchmarks/dense_alternatives.py``: the 3-layer row). ``coder train`` therefore distils a student
(``coder.train.distil``: some of the encoder's layers over its frozen embeddings, trained to give each
sentence the encoder's unit vector) on the sentences of the training and unlabelled notes; here, as for the
shipped model, those of CodiEsp's train and background notes, never dev's. Rows, each the dense search alone
on the dev notes (``dense_alternatives.evaluate``):

- encoder: the search with the encoder for terms and sentences, the reference;
- student: the search with the student's layers for the sentences, the terms keeping the encoder's vectors
  (what ``coder train`` ships).

Prints the table and adds a dated run to this benchmark's section of benchmarks/RESULTS.md. Torch trains
the student on the CPU's cores; the term vectors and the cache live in a temporary folder.

    python benchmarks/distilled_encoder.py [--layers 3] [--epochs 1] [--sentences 40000] [--seed 0]
        [--out FILE] [--note TEXT]

With ``--out`` the layers file is kept, to be priced end to end: ``python benchmarks/accuracy.py --plm-model
models/codiesp-minilm --sentence-layers FILE``.

CodiEsp: CLEF eHealth 2020, Miranda-Escalada et al., CC BY 4.0 (data/codiesp/).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import polars as pl

from coder.candidates.dense_search import DenseSearch
from coder.candidates.ontology_search import ontology_terms
from coder.io.corpus import Corpus
from coder.model.folder import default_encoder_path
from coder.ontology import load_ontology
from coder.ontology.cache import CACHE_DIR_ENV
from coder.schema import CODE, SYSTEM, TEXT, TEXT_ES
from coder.train.distil import SENTENCES, distil_sentence_layers, note_sentences
from dense_alternatives import DATA, ONTOLOGY, evaluate, table, timed
from results import add_run, code_version

TITLE = "## A distilled sentence encoder for the dense search, alone (benchmarks/distilled_encoder.py)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=3, help="The student's layers (the encoder's, evenly spaced).")
    parser.add_argument("--epochs", type=int, default=1, help="Passes over the training sentences.")
    parser.add_argument("--sentences", type=int, default=SENTENCES,
                        help="Training sentences at most (a seeded sample of the train and background notes').")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sample and of the training.")
    parser.add_argument("--out", type=Path, help="Keep the layers file here (for accuracy.py --sentence-layers).")
    parser.add_argument("--note", default="", help="Free text recorded with the run (e.g. other load on the machine).")
    args = parser.parse_args()
    dev = Corpus.read(DATA / "dev" / "notes.parquet", DATA / "dev" / "codes.parquet", text_columns=[TEXT], optional=[TEXT_ES])
    train_codes = pl.read_parquet(DATA / "train" / "codes.parquet")
    unseen = {(s, c) for s, c in dev.codes.select(SYSTEM, CODE).iter_rows()} - \
        {(s, c) for s, c in train_codes.select(SYSTEM, CODE).iter_rows()}
    terms = ontology_terms(load_ontology(ONTOLOGY))
    load, commit = os.getloadavg()[0], code_version()
    with tempfile.TemporaryDirectory() as folder, mock.patch.dict(os.environ, {CACHE_DIR_ENV: str(Path(folder) / "cache")}):
        encoder, seconds = timed(lambda: DenseSearch().index(terms))
        rows = {"encoder (shipped, 6 layers)": evaluate(encoder, seconds, dev, unseen)}
        texts = [text for split in ("train", "background") for text in pl.read_parquet(DATA / split / "notes.parquet")[TEXT]]
        sentences = note_sentences(texts, limit=args.sentences, seed=args.seed)
        tick = time.perf_counter()
        layers = distil_sentence_layers(default_encoder_path(), sentences, args.out or Path(folder) / "layers.safetensors",
                                        layers=args.layers, epochs=args.epochs, seed=args.seed)
        train_s, size = time.perf_counter() - tick, layers.stat().st_size
        student, seconds = timed(lambda: DenseSearch(sentence_layers=str(layers)).index(terms))
        rows[f"student ({args.layers} layers) for the sentences"] = evaluate(student, seconds, dev, unseen)
    command = shlex.join(["python", "benchmarks/distilled_encoder.py", *sys.argv[1:]])
    section = "\n".join([
        f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"`{command}` on {platform.machine()} ({os.cpu_count()} CPUs), commit {commit}: {dev.notes.height} dev notes, "
        f"{terms.height:,} terms; student ({args.layers} layers, embeddings frozen) trained on {len(sentences):,} sentences "
        f"of the train and background notes in {train_s:.0f} s ({args.epochs} epoch{'s' * (args.epochs > 1)}, with the "
        f"encoder's pass); layers file {size / 1e6:.1f} MB; load average {load:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end.{' ' + args.note if args.note else ''}", "", table(rows), ""])
    add_run("distilled-encoder", title=TITLE, section=section)
    print(section)


if __name__ == "__main__":
    main()
