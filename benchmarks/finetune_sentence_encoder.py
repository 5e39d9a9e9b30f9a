"""Contrastive fine-tuning of the dense search's sentence encoder on pairs mined from notes and codes alone.

For each CodiEsp train note and each of its gold codes, the note sentence closest to the code's
description (stock all-MiniLM-L6-v2, cosine above ``MIN_COSINE``) and the description make a pair; one
epoch of in-batch contrastive loss in both directions (pairs that share a description are not each
other's negatives). Dev notes are never read. Writes a Hugging Face folder, to be measured with
``accuracy.py`` like the stock encoder:

    python benchmarks/finetune_sentence_encoder.py --out /tmp/coder-bench/minilm-ft
    python benchmarks/accuracy.py --plm-model models/codiesp-minilm --sentence-encoder /tmp/coder-bench/minilm-ft

CodiEsp: CLEF eHealth 2020, Miranda-Escalada et al., CC BY 4.0 (data/codiesp/).
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from pathlib import Path

import polars as pl
import torch
from transformers import AutoModel, AutoTokenizer

from coder.candidates.dense_search import SENTENCE_TOKENS, TERM_TOKENS
from coder.candidates.words import sentence_spans
from coder.model.folder import default_encoder_path
from coder.ontology import load_ontology
from coder.schema import CODE, NOTE_ID, SYSTEM, TEXT

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "codiesp" / "train"
MIN_COSINE = 0.3  # a pair only where some sentence is near the description at all
SCALE = 20.0  # cosine -> logit, as sentence-transformers' MultipleNegativesRankingLoss
logger = logging.getLogger("finetune")


class MeanPooled(torch.nn.Module):
    """The encoder's last hidden states averaged over the real tokens, scaled to unit length, as the dense
    search's graph computes them (``coder.candidates.sentence_encoder``)."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


def mine_pairs(model: MeanPooled, tokenizer, notes: pl.DataFrame, codes: pl.DataFrame, ontology) -> list[tuple[str, str]]:
    """(sentence, description) pairs: per note and gold code, the sentence nearest the description."""
    text_of = dict(notes.select(NOTE_ID, TEXT).iter_rows())
    pairs = []
    with torch.inference_mode():
        for (note_id,), group in codes.group_by(NOTE_ID, maintain_order=True):
            text = text_of.get(note_id) or ""
            sentences = [text[a:b].strip() for a, b in sentence_spans(text).tolist()]
            descriptions = [d for s, c in group.select(SYSTEM, CODE).iter_rows() if (d := ontology.description(c, s))]
            if not sentences or not descriptions:
                continue
            similar = encode(model, tokenizer, descriptions, TERM_TOKENS) @ encode(model, tokenizer, sentences, SENTENCE_TOKENS).T
            best = similar.max(dim=1)
            pairs += [(sentences[j], d) for d, v, j in zip(descriptions, best.values.tolist(), best.indices.tolist(),
                                                              strict=True) if v > MIN_COSINE]
    return pairs


def encode(model: MeanPooled, tokenizer, texts: list[str], max_length: int) -> torch.Tensor:
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return model(batch["input_ids"], batch["attention_mask"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the fine-tuned encoder to")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per step (the in-batch negatives)")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    encoder = default_encoder_path()
    tokenizer = AutoTokenizer.from_pretrained(str(encoder))
    model = MeanPooled(AutoModel.from_pretrained(str(encoder))).eval()
    ontology = load_ontology(ROOT / "ontologies" / "codiesp-2018-extras.tsv")
    notes, codes = pl.read_parquet(DATA / "notes.parquet"), pl.read_parquet(DATA / "codes.parquet")
    started = time.perf_counter()
    pairs = mine_pairs(model, tokenizer, notes, codes.select(NOTE_ID, SYSTEM, CODE).unique(maintain_order=True), ontology)
    logger.info("%d pairs mined from %d train notes in %.0f s", len(pairs), notes.height, time.perf_counter() - started)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr)
    random.shuffle(pairs)
    for step, start in enumerate(range(0, len(pairs) - args.batch_size + 1, args.batch_size)):
        batch = pairs[start : start + args.batch_size]
        logits = SCALE * encode(model, tokenizer, [s for s, _ in batch], SENTENCE_TOKENS) @ \
            encode(model, tokenizer, [d for _, d in batch], TERM_TOKENS).T
        same = torch.tensor([[a[1] == b[1] for b in batch] for a in batch]) & ~torch.eye(len(batch), dtype=torch.bool)
        logits = logits.masked_fill(same, -1e4)
        target = torch.arange(len(batch))
        loss = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 50 == 0:
            logger.info("step %d, loss %.3f, %.0f s", step, loss.item(), time.perf_counter() - started)
    args.out.mkdir(parents=True, exist_ok=True)
    model.encoder.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    logger.info("wrote %s in %.0f s", args.out, time.perf_counter() - started)


if __name__ == "__main__":
    main()
