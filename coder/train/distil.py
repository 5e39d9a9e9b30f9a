"""A smaller encoder for the dense search's note sentences, distilled from its sentence encoder.

The dense search encodes every sentence of every note with its encoder (all-MiniLM-L6-v2 costs about
as much as PLM-ICD's pass). A student keeps some of the encoder's layers (evenly spaced, the first and
the last among them) over its embeddings, which stay frozen so that a model folder carries the layers
alone, and learns to give each sentence the encoder's own unit vector (loss 1 - cosine), as the int8 file
that makes the term vectors gives it (``coder.candidates.sentence_encoder``): the terms keep the encoder's
vectors, which the student's are compared with. It learns from sentences of the training and unlabelled
notes, never dev's, and needs no codes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from coder.candidates import CandidateSource
from coder.candidates.dense_search import SENTENCE_TOKENS, DenseSearch
from coder.candidates.sentence_encoder import LAYER_PREFIX, bert_config, sentence_encoder, write_layers
from coder.candidates.words import sentence_spans
from coder.hashing import folder_sha256
from coder.io.progress import Progress
from coder.model.folder import default_encoder_path
from coder.model.session import create_session

logger = logging.getLogger(__name__)

BATCH = 64
LEARNING_RATE = 1e-4
# Sentences a student learns from at most: every one of CodiEsp's train and background notes (68,893), in about
# 7 min on 2 cores (benchmarks/distilled_encoder.py prices students on the dense search alone).
SENTENCES = 80_000


def with_sentence_layers(sources: Sequence[CandidateSource], *, layers: int, texts: pl.DataFrame, folder: Path,
                         seed: int) -> list[CandidateSource]:
    """``sources`` with each dense search's note sentences encoded by a ``layers``-layer student of its
    encoder, distilled on the sentences of ``texts`` (the training and unlabelled notes) into a layers file
    in ``folder``; a search whose encoder has no more than ``layers`` layers (or ``layers`` 0) is kept as it is."""
    out = []
    for source in sources:
        if isinstance(source, DenseSearch) and layers:
            encoder = Path(source.encoder) if source.encoder else default_encoder_path()
            own = bert_config(encoder)["num_hidden_layers"]  # a folder the dense search cannot run fails here
            if layers < own:
                sentences = note_sentences(texts[source.text_column].drop_nulls(), limit=SENTENCES, seed=seed)
                file = distil_sentence_layers(encoder, sentences, folder / f"{source.name}.safetensors", layers=layers,
                                              seed=seed)
                source = type(source)(**{**source.get_params(), "sentence_layers": str(file)})
            else:
                logger.info("%s: the encoder has %d layers, not more than --sentence-layers %d: it encodes the sentences",
                            source.name, own, layers)
        out.append(source)
    return out


def note_sentences(texts: Iterable[str], *, limit: int, seed: int) -> list[str]:
    """The sentences of ``texts`` as the dense search cuts them; a seeded sample of ``limit`` (in their
    order) when there are more."""
    found = [text[a:b] for text in texts for a, b in sentence_spans(text).tolist()]
    if len(found) > limit:
        found = [found[i] for i in np.sort(np.random.default_rng(seed).choice(len(found), size=limit, replace=False))]
    return found


def distil_sentence_layers(encoder: Path, sentences: list[str], out: Path, *, layers: int, epochs: int = 1,
                           seed: int = 0) -> Path:
    """Train a ``layers``-layer student of ``encoder`` (a local Hugging Face BERT folder with fewer
    layers than ``encoder``) on ``sentences`` and write its layers to the layers file ``out``."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(encoder))
    teacher = create_session(sentence_encoder(encoder, sha256=folder_sha256(encoder)).model, device="cpu")
    ids = tokenizer(sentences, truncation=True, max_length=SENTENCE_TOKENS)["input_ids"]
    order = np.argsort([len(row) for row in ids], kind="stable")  # batches of like lengths: little padding
    batches = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]

    def padded(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(ids[i]) for i in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, i in enumerate(rows):
            input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
            mask[row, : len(ids[i])] = 1
        return input_ids, mask

    def pooled(model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    # the encoder's pass over the sentences, then each epoch's
    progress = Progress(total=(epochs + 1) * len(sentences), unit="sentence", label=f"distilling {layers} sentence layers")
    targets = torch.zeros((len(sentences), teacher.get_outputs()[0].shape[-1]))
    for rows in batches:
        input_ids, mask = padded(rows)
        targets[rows] = torch.from_numpy(teacher.run(None, {"input_ids": input_ids.numpy(), "attention_mask": mask.numpy()})[0])
        progress.update(len(rows))
    student = AutoModel.from_pretrained(str(encoder))
    own = student.config.num_hidden_layers
    keep = np.linspace(0, own - 1, layers).round().astype(int).tolist()
    student.encoder.layer = torch.nn.ModuleList(student.encoder.layer[i] for i in keep)
    student.config.num_hidden_layers = layers
    student.embeddings.requires_grad_(False)  # the encoder's: the model folder holds the layers alone
    student.train()
    optimiser = torch.optim.AdamW([w for w in student.parameters() if w.requires_grad], lr=LEARNING_RATE)
    for epoch in range(epochs):
        losses = []
        for step in np.random.default_rng(seed + epoch).permutation(len(batches)):
            rows = batches[step]
            loss = 1 - torch.nn.functional.cosine_similarity(pooled(student, *padded(rows)), targets[rows], dim=1).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            progress.update(len(rows))
        logger.info("sentence layers: epoch %d of %d, mean loss %.4f", epoch + 1, epochs, float(np.mean(losses)))
    progress.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_layers(out, {name: tensor.detach().numpy() for name, tensor in student.state_dict().items()
                       if name.startswith(LAYER_PREFIX)})
    logger.info("sentence layers: %d of the encoder's %d layers (%s) distilled on %d sentences into %s",
                layers, own, keep, len(sentences), out)
    return out
