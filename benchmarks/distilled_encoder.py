"""A smaller sentence encoder for the dense search, distilled from the shipped one, scored as "dense alone".

The dense search's encoder (all-MiniLM-L6-v2, 6 layers) costs about as much as PLM-ICD's pass
(``benchmarks/throughput.py``), and cutting it to its first layers loses nearly all of the search's value
(``benchmarks/dense_alternatives.py``: the 3-layer row). Here a student with fewer layers (the teacher's
embeddings and every other layer) learns to give each sentence the teacher's unit vector (loss 1 - cosine)
on the sentences of the train and the unlabelled background notes, never dev's; the teacher is the shipped
int8 encoder. Rows, each the dense search alone on the dev notes (``dense_alternatives.evaluate``):

- teacher: the shipped encoder, the reference;
- student, both: the student encodes the terms and the sentences;
- student, sentences: the student encodes the sentences, against the teacher's term vectors (the search
  would then keep the teacher's terms and run only the student per note).

Prints the table and adds a dated run to this benchmark's section of benchmarks/RESULTS.md. Torch trains
the student on the CPU's cores; the term vectors and the cache live in a temporary folder.

    python benchmarks/distilled_encoder.py [--layers 3] [--epochs 1] [--sentences 40000] [--freeze-embeddings]
        [--out FOLDER] [--note TEXT]

With ``--out`` the student's Hugging Face folder is kept, to be priced end to end as the other encoders are:
``python benchmarks/accuracy.py --plm-model models/codiesp-minilm --sentence-encoder FOLDER`` (the student
then encodes the terms too).

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

import numpy as np
import polars as pl

from coder.candidates.dense_search import SENTENCE_TOKENS, DenseSearch
from coder.candidates.ontology_search import ontology_terms
from coder.io.corpus import Corpus
from coder.model.folder import default_encoder_path
from coder.ontology import load_ontology
from coder.ontology.cache import CACHE_DIR_ENV
from coder.schema import CODE, SYSTEM, TEXT, TEXT_ES
from dense_alternatives import DATA, ONTOLOGY, PooledSearch, _encoder_copy, evaluate, note_sentences, table, timed
from results import add_run, code_version

TITLE = "## A distilled sentence encoder for the dense search, alone (benchmarks/distilled_encoder.py)"
BATCH = 64
LEARNING_RATE = 1e-4
SEED = 0


def sentences(splits: list[str], limit: int) -> list[str]:
    """The sentences of ``splits``' notes (English text), as the dense search cuts them; a seeded sample
    of ``limit`` when there are more."""
    found = [sentence for split in splits for text in pl.read_parquet(DATA / split / "notes.parquet")[TEXT]
             for sentence in note_sentences(text)]
    if len(found) > limit:
        chosen = np.random.default_rng(SEED).choice(len(found), size=limit, replace=False)
        found = [found[i] for i in np.sort(chosen)]
    return found


def distil(texts: list[str], targets: np.ndarray, *, layers: int, epochs: int, out: Path,
           freeze_embeddings: bool = False) -> Path:
    """A copy of the shipped encoder folder at ``out`` whose weights are a ``layers``-layer student trained
    to give each of ``texts`` its row of ``targets`` (unit vectors), mean pooled as the teacher is; with
    ``freeze_embeddings``, its embeddings stay the teacher's (a model folder could then hold only its layers)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(SEED)
    teacher = default_encoder_path()
    tokenizer = AutoTokenizer.from_pretrained(str(teacher))
    model = AutoModel.from_pretrained(str(teacher))
    keep = np.linspace(0, model.config.num_hidden_layers - 1, layers).round().astype(int).tolist()
    model.encoder.layer = torch.nn.ModuleList(model.encoder.layer[i] for i in keep)
    model.config.num_hidden_layers = layers
    model.embeddings.requires_grad_(not freeze_embeddings)
    encoded = tokenizer(texts, truncation=True, max_length=SENTENCE_TOKENS)["input_ids"]
    order = np.argsort([len(ids) for ids in encoded], kind="stable")  # batches of like lengths: little padding
    batches = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
    optimiser = torch.optim.AdamW([weight for weight in model.parameters() if weight.requires_grad], lr=LEARNING_RATE)
    target = torch.from_numpy(targets)
    model.train()
    for epoch in range(epochs):
        losses = []
        for step in np.random.default_rng(SEED + epoch).permutation(len(batches)):
            rows = batches[step]
            width = max(len(encoded[i]) for i in rows)
            ids = torch.full((len(rows), width), tokenizer.pad_token_id)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for row, i in enumerate(rows):
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, : len(encoded[i])] = 1
            states = model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            loss = 1 - torch.nn.functional.cosine_similarity(pooled, target[rows], dim=1).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        print(f"epoch {epoch + 1}: mean loss {np.mean(losses):.4f}", file=sys.stderr, flush=True)
    folder = _encoder_copy(out)
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=3, help="The student's layers (the teacher's, evenly spaced).")
    parser.add_argument("--epochs", type=int, default=1, help="Passes over the training sentences.")
    parser.add_argument("--sentences", type=int, default=40_000,
                        help="Training sentences at most (a seeded sample of the train and background notes').")
    parser.add_argument("--freeze-embeddings", action="store_true", help="Train the student's layers only.")
    parser.add_argument("--out", type=Path, help="Keep the student's folder here (for accuracy.py --sentence-encoder).")
    parser.add_argument("--note", default="", help="Free text recorded with the run (e.g. other load on the machine).")
    args = parser.parse_args()
    dev = Corpus.read(DATA / "dev" / "notes.parquet", DATA / "dev" / "codes.parquet", text_columns=[TEXT], optional=[TEXT_ES])
    train_codes = pl.read_parquet(DATA / "train" / "codes.parquet")
    unseen = {(s, c) for s, c in dev.codes.select(SYSTEM, CODE).iter_rows()} - \
        {(s, c) for s, c in train_codes.select(SYSTEM, CODE).iter_rows()}
    terms = ontology_terms(load_ontology(ONTOLOGY))
    load, commit = os.getloadavg()[0], code_version()
    with tempfile.TemporaryDirectory() as folder, mock.patch.dict(os.environ, {CACHE_DIR_ENV: str(Path(folder) / "cache")}):
        teacher, seconds = timed(lambda: DenseSearch().index(terms))
        rows = {"teacher (shipped, 6 layers)": evaluate(teacher, seconds, dev, unseen)}
        texts = sentences(["train", "background"], args.sentences)
        targets = teacher._encode(texts, max_length=SENTENCE_TOKENS)
        tick = time.perf_counter()
        student = distil(texts, targets, layers=args.layers, epochs=args.epochs, out=args.out or Path(folder) / "student",
                         freeze_embeddings=args.freeze_embeddings)
        train_s = time.perf_counter() - tick
        both, seconds = timed(lambda: DenseSearch(encoder=str(student)).index(terms))
        rows[f"student ({args.layers} layers), both"] = evaluate(both, seconds, dev, unseen)
        pooled = {}  # each dev note's sentences through the student, as the search encodes them
        for text in dev.notes[TEXT]:
            if cut := note_sentences(text):
                pooled[cut] = both._encode(list(cut), max_length=SENTENCE_TOKENS)
        rows[f"student ({args.layers} layers), sentences"] = evaluate(PooledSearch(pooled=pooled).index(terms), 0.0, dev, unseen)
    command = shlex.join(["python", "benchmarks/distilled_encoder.py", *sys.argv[1:]])
    section = "\n".join([
        f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"`{command}` on {platform.machine()} ({os.cpu_count()} CPUs), commit {commit}: {dev.notes.height} dev notes, "
        f"{terms.height:,} terms; student trained on {len(texts):,} sentences of the train and background notes in "
        f"{train_s:.0f} s ({args.epochs} epoch{'s' * (args.epochs > 1)}"
        f"{', embeddings frozen' if args.freeze_embeddings else ''}); load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end."
        f"{' ' + args.note if args.note else ''}", "", table(rows), "",
        "The last row's ms/note leaves out the student's own pass (its sentence vectors were made beforehand); "
        "the row above runs it.", ""])
    add_run("distilled-encoder", title=TITLE, section=section)
    print(section)


if __name__ == "__main__":
    main()
