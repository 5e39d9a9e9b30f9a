"""Tokenise a note once and cut it into fixed-length chunks for PLM-ICD.

Each chunk is ``[CLS] up to chunk_len - 2 word pieces [SEP]`` padded to ``chunk_len``; a note
keeps at most ``max_chunks`` chunks (the rest is truncated and reported). Token-to-character
offsets are kept so that a label-attention peak can point back into the note text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from coder.errors import ModelBundleError

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_LEN = 128
DEFAULT_MAX_CHUNKS = 24
NO_OFFSET = -1  # offsets of [CLS], [SEP] and padding
SPECIAL_TOKENS = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]"}  # BERT's, where a folder names none


@dataclass(frozen=True)
class WordPieces:
    """PLM-ICD's tokenizer: a fast tokenizer's Rust backend, padding and truncation off, and the ids of its
    [CLS], [SEP] and [PAD] tokens. ``read`` takes it from a folder with ``tokenizers`` alone, so scoring
    imports neither transformers nor torch; ``of`` from a Hugging Face tokenizer, as training holds one.
    Both give the ids and offsets of the Hugging Face tokenizer's call without special tokens (tests)."""

    backend: Tokenizer
    cls_token_id: int
    sep_token_id: int
    pad_token_id: int

    @classmethod
    def of(cls, tokenizer: Any) -> WordPieces:
        """From a Hugging Face fast tokenizer."""
        return cls._with(tokenizer.backend_tokenizer, {name: getattr(tokenizer, name) for name in SPECIAL_TOKENS},
                         where="the tokenizer")

    @classmethod
    def read(cls, folder: Path) -> WordPieces:
        """From a tokenizer folder: ``tokenizer.json``, and the special tokens ``tokenizer_config.json`` or
        ``special_tokens_map.json`` names."""
        try:
            backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
            named = {}
            for file in ("special_tokens_map.json", "tokenizer_config.json"):  # the config's names win
                if (folder / file).is_file():
                    named |= json.loads((folder / file).read_text(encoding="utf-8"))
        except Exception as error:  # tokenizers raises its own Exception subclass for a malformed file
            raise ModelBundleError(f"cannot read the tokenizer in {folder}: {error}") from None
        tokens = {}
        for name, default in SPECIAL_TOKENS.items():
            token = named.get(name) or default
            tokens[name] = token["content"] if isinstance(token, dict) else token  # an AddedToken as saved
        return cls._with(backend, tokens, where=str(folder))

    @classmethod
    def _with(cls, backend: Tokenizer, tokens: dict[str, str], *, where: str) -> WordPieces:
        backend = Tokenizer.from_str(backend.to_str())  # a copy: the caller's keeps its settings
        backend.no_padding()
        backend.no_truncation()
        ids = {name: backend.token_to_id(token) for name, token in tokens.items()}
        missing = [tokens[name] for name, token_id in ids.items() if token_id is None]
        if missing:
            raise ModelBundleError(f"{where}: the vocabulary lacks {', '.join(missing)}")
        return cls(backend, ids["cls_token"], ids["sep_token"], ids["pad_token"])

    def encode(self, texts: Sequence[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
        """Each text's word-piece ids and character offsets, without special tokens, not truncated."""
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings], [e.offsets for e in encodings]


@dataclass(frozen=True)
class ChunkedNote:
    """One note as chunks; empty (``n_chunks == 0``) when nothing was left after tokenisation."""

    input_ids: np.ndarray  # [n_chunks, chunk_len] int64
    attention_mask: np.ndarray  # [n_chunks, chunk_len] int64, 1 for real tokens
    offsets: np.ndarray  # [n_chunks, chunk_len, 2] int32 character (start, end), NO_OFFSET if none
    truncated: bool  # the note had more than max_chunks chunks of word pieces

    @property
    def n_chunks(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def unprocessable(self) -> bool:
        return self.n_chunks == 0


def chunk_notes(
    texts: Sequence[str],
    *,
    tokenizer: WordPieces,
    chunk_len: int = DEFAULT_CHUNK_LEN,
    max_chunks: int = DEFAULT_MAX_CHUNKS,
) -> list[ChunkedNote]:
    """Tokenise ``texts`` in one call (no special tokens) and cut each into chunks."""
    if chunk_len < 3 or max_chunks < 1:
        raise ValueError(f"chunk_len must be >= 3 and max_chunks >= 1, got {chunk_len} and {max_chunks}")
    return [
        _cut(ids, offsets, tokenizer=tokenizer, chunk_len=chunk_len, max_chunks=max_chunks)
        for ids, offsets in zip(*tokenizer.encode(texts), strict=True)
    ]


def _cut(
    ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    *,
    tokenizer: WordPieces,
    chunk_len: int,
    max_chunks: int,
) -> ChunkedNote:
    body = chunk_len - 2  # room for [CLS] and [SEP]
    n_chunks = min(-(-len(ids) // body), max_chunks)
    kept = n_chunks * body
    input_ids = np.full((n_chunks, chunk_len), tokenizer.pad_token_id, dtype=np.int64)
    mask = np.zeros((n_chunks, chunk_len), dtype=np.int64)
    spans = np.full((n_chunks, chunk_len, 2), NO_OFFSET, dtype=np.int32)
    for c in range(n_chunks):
        piece = ids[c * body : (c + 1) * body]
        n = len(piece)
        input_ids[c, 0] = tokenizer.cls_token_id
        input_ids[c, 1 : n + 1] = piece
        input_ids[c, n + 1] = tokenizer.sep_token_id
        mask[c, : n + 2] = 1
        spans[c, 1 : n + 1] = offsets[c * body : c * body + n]
    return ChunkedNote(input_ids=input_ids, attention_mask=mask, offsets=spans, truncated=len(ids) > kept)


@dataclass(frozen=True)
class Batch:
    """Notes padded to the same number of chunks; padding chunks have an all-zero mask."""

    indices: tuple[int, ...]  # positions of these notes in the list given to ``batches``
    input_ids: np.ndarray  # [batch, n_chunks, chunk_len] int64
    attention_mask: np.ndarray  # [batch, n_chunks, chunk_len] int64

    @property
    def n_chunks(self) -> int:
        """Real (unpadded) chunks in the batch."""
        return int(self.attention_mask[:, :, 0].sum())


def collate(notes: Sequence[ChunkedNote], *, indices: Sequence[int], pad_id: int) -> Batch:
    """Pad ``notes`` (none empty) to the largest chunk count; the chunk mask is ``attention_mask[:, :, 0]``."""
    width = max(note.n_chunks for note in notes)
    chunk_len = notes[0].input_ids.shape[1]
    input_ids = np.full((len(notes), width, chunk_len), pad_id, dtype=np.int64)
    mask = np.zeros((len(notes), width, chunk_len), dtype=np.int64)
    for i, note in enumerate(notes):
        input_ids[i, : note.n_chunks] = note.input_ids
        mask[i, : note.n_chunks] = note.attention_mask
    return Batch(indices=tuple(indices), input_ids=input_ids, attention_mask=mask)


def bucketed_order(notes: Sequence[ChunkedNote]) -> list[int]:
    """Indices of the processable notes, shortest first, so a batch holds notes of similar length."""
    return sorted((i for i, note in enumerate(notes) if not note.unprocessable), key=lambda i: notes[i].n_chunks)


def batches(
    notes: Sequence[ChunkedNote], *, batch_size: int, pad_id: int, order: Sequence[int] | None = None
) -> Iterator[Batch]:
    """Yield padded batches of ``notes`` in ``order`` (default: bucketed by length), skipping empty notes."""
    order = bucketed_order(notes) if order is None else [i for i in order if not notes[i].unprocessable]
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        yield collate([notes[i] for i in chosen], indices=chosen, pad_id=pad_id)


def score_in_batches(
    forward: Callable[[Batch], tuple[np.ndarray, np.ndarray]],
    notes: Sequence[ChunkedNote],
    *,
    n_labels: int,
    batch_size: int,
    pad_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``forward`` (batch -> logits, peaks, each [batch, n_labels]) over bucketed batches.

    Returns sigmoid scores [n_notes, n_labels] float32 and attention peaks [n_notes, n_labels]
    int64 in input order; unprocessable notes get score 0 and peak -1.
    """
    scores = np.zeros((len(notes), n_labels), dtype=np.float32)
    peaks = np.full((len(notes), n_labels), -1, dtype=np.int64)
    for batch in batches(notes, batch_size=batch_size, pad_id=pad_id):
        logits, peak = forward(batch)
        rows = list(batch.indices)
        scores[rows] = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        peaks[rows] = peak
    return scores, peaks
