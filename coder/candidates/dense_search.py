"""Dense search: note sentences against code terms as sentence vectors (nearest neighbours).

Every description and inclusion term of the ontology (``ontology_terms``) and every sentence of a
note becomes a unit vector of a sentence encoder (all-MiniLM-L6-v2 by default, mean pooled); a
code scores the best cosine between one of its terms and a sentence of the note. Like the TF-IDF
ontology search it reaches codes never seen in training, and it also finds them when the note words
a condition differently from the ontology. Descriptions are English, so it reads ``text``.

The encoder is not copied into the model folder (it would double its size): the folder records
which encoder (None: the packaged all-MiniLM-L6-v2) and the sha256 of its files, checked on load.
What is derived from it is built on first use and kept in ``coder.ontology.cache``: the encoder as
int8 ONNX (``coder.export.sentence``) and the term vectors (fp16; for the shipped model's 201k
terms 155 MB and a few minutes on 2 cores, README "Speed and memory").

int8 quantises the activations per call, so a sentence's vector moves a little with the sentences it
is encoded beside (another ``ENCODE_BATCH`` changes some scores in the second decimal and some rows at
the top-k cut). Sentences are sorted by length before batching, so a note's batch-mates are similar
sentences, and a resumed run forms the same batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator
from itertools import pairwise
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
import polars as pl

from coder.candidates.ontology_search import (TERM, Found, ontology_terms, ordered_terms, search_frame,
                                              sentence_spans)
from coder.errors import ModelBundleError, NotFittedError
from coder.estimator import ParamsMixin, read_state
from coder.hashing import folder_sha256
from coder.io.atomic import write_parquet, write_text
from coder.model.folder import default_encoder_path
from coder.model.session import create_session
from coder.ontology import Ontology
from coder.ontology.cache import cache_dir, cache_key, write_cache
from coder.schema import CODE, NOTE_ID, SYSTEM, TEXT

if TYPE_CHECKING:
    from coder.io.corpus import Corpus

logger = logging.getLogger(__name__)

VECTORS_VERSION = 1  # bump when the cached term vectors' layout or the way they are made changes
TERM_TOKENS = 48  # descriptions are short: 99.9% of the shipped model's terms fit
SENTENCE_TOKENS = 128
ENCODE_BATCH = 128  # texts per encoder call, sorted by length so that a batch pads little
# Blocks of the search (``_code_maxima``): similarities [SENTENCE_BLOCK, TERM_CHUNK] (16 MB of float32),
# code maxima [NOTE_BLOCK, n_codes] (24 MB for the shipped model's 189k codes) and a float32 chunk of
# terms (12 MB) at a time. Each block converts every term from fp16 once.
SENTENCE_BLOCK = 512
NOTE_BLOCK = 32
TERM_CHUNK = 8_192


class DenseSearch(ParamsMixin):
    """Top codes per note and system by cosine between sentence vectors of note sentences and code terms.

    Parameters
    ----------
    name: the score column written by ``candidates`` (the candidate source's name).
    text_column: the notes column that is read (descriptions are English: ``text``).
    top_k: candidates kept per (note, system).
    encoder: a local Hugging Face sentence encoder folder; None: the packaged all-MiniLM-L6-v2.
    """

    learns_from_notes = False

    def __init__(self, *, name: str = "dense", text_column: str = TEXT, top_k: int = 30, encoder: str | None = None):
        self.name = name
        self.text_column = text_column
        self.top_k = top_k
        self.encoder = encoder

    def can_fit(self, corpus: Corpus) -> bool:
        """The vectors come from the ontology alone; predicting needs the English text column."""
        return self.text_column in corpus.notes.columns

    def fit(self, corpus: Corpus | None = None, *, ontology: Ontology) -> DenseSearch:
        """Embed every code's terms of ``ontology`` (``ontology_terms``); notes are not read."""
        return self.index(ontology_terms(ontology))

    def index(self, terms: pl.DataFrame, *, encoder_sha256: str | None = None) -> DenseSearch:
        """Embed ``terms`` (TERMS_SCHEMA), or read their vectors from the cache. ``encoder_sha256``:
        the encoder files' hash the saved search was built with (a mismatch is a bundle error)."""
        folder = Path(self.encoder) if self.encoder else default_encoder_path()
        if not folder.is_dir():
            raise ModelBundleError(f"dense search: encoder folder {folder} not found; install it or set the source's encoder")
        self.encoder_sha256_ = folder_sha256(folder)
        if encoder_sha256 is not None and encoder_sha256 != self.encoder_sha256_:
            raise ModelBundleError(f"dense search: the encoder at {folder} has sha256 {self.encoder_sha256_[:12]}…, the model "
                                   f"was built with {encoder_sha256[:12]}…; install the encoder it was built with")
        from transformers import AutoTokenizer

        self.tokenizer_ = AutoTokenizer.from_pretrained(str(folder))
        self.session_ = _encoder_session(folder, self.encoder_sha256_)
        self.terms_, self.codes_, self.code_starts_, self.code_ends_ = ordered_terms(terms)
        self.chunks_ = _term_chunks(self.code_starts_, self.terms_.height, TERM_CHUNK)
        self.vectors_ = self._term_vectors()
        logger.info("dense search: %d terms for %d codes", self.terms_.height, self.codes_.height)
        return self

    def _term_vectors(self) -> np.ndarray:
        """[n_terms, dim] fp16 unit vectors of ``terms_`` (half the memory of float32), cached by the
        encoder and the terms."""
        digest = hashlib.sha256("\n".join(f"{s}\t{c}\t{t}" for s, c, t in self.terms_.iter_rows()).encode()).hexdigest()
        key = cache_key(sources=[], salt=json.dumps({"vectors": VECTORS_VERSION, "encoder": self.encoder_sha256_,
                                                      "terms": digest, "tokens": TERM_TOKENS, **_export_versions()}))
        stem = f"dense-{self.encoder_sha256_[:12]}"
        file = cache_dir() / f"{stem}-{key[:12]}.npz"
        try:
            with np.load(file, allow_pickle=False) as arrays:
                if arrays["key"].tobytes().decode() == key and len(arrays["vectors"]) == self.terms_.height:
                    logger.info("dense search: term vectors from %s", file)
                    return arrays["vectors"]
        except (OSError, ValueError, KeyError, EOFError):
            pass  # missing or unusable: embedded again below
        logger.info("dense search: embedding %d terms (first use of this encoder and ontology)", self.terms_.height)
        vectors = self._encode(self.terms_[TERM].to_list(), max_length=TERM_TOKENS).astype(np.float16)
        arrays = {"key": np.frombuffer(key.encode(), dtype=np.uint8), "vectors": vectors}
        # other term sets of this encoder belong to other models: kept
        write_cache(file, lambda handle: np.savez(handle, **arrays), what="term vectors")
        return vectors

    def _encode(self, texts: list[str], *, max_length: int) -> np.ndarray:
        """[len(texts), dim] float32 unit vectors, ``ENCODE_BATCH`` texts of similar length at a time."""
        if not texts:  # nothing to encode (no terms, or a batch without sentences): no rows are read
            return np.zeros((0, 0), dtype=np.float32)
        order = np.argsort([len(text) for text in texts], kind="stable")
        parts = []
        for start in range(0, len(texts), ENCODE_BATCH):
            batch = self.tokenizer_([texts[i] for i in order[start : start + ENCODE_BATCH]], padding=True,
                                    truncation=True, max_length=max_length, return_tensors="np")
            parts.append(self.session_.run(None, {"input_ids": batch["input_ids"].astype(np.int64),
                                                  "attention_mask": batch["attention_mask"].astype(np.int64)})[0])
        vectors = np.concatenate(parts)
        out = np.empty_like(vectors)
        out[order] = vectors
        return out

    def candidates(self, notes: pl.DataFrame) -> pl.DataFrame:
        """The ``top_k`` codes per (note, system): note_id, system, code, <name>, <name>_rank,
        evidence_text/start/end (the best sentence, offsets into ``text_column``)."""
        if not hasattr(self, "vectors_"):
            raise NotFittedError("DenseSearch is not fitted: call fit(ontology=...) or DenseSearch.load(path)")
        texts, spans = [], []
        for note_id, text in notes.select(NOTE_ID, self.text_column).iter_rows():
            if len(found := sentence_spans(text)):
                texts.append((note_id, text))
                spans.append(found)
        sentences = [text[a:b] for (_, text), found in zip(texts, spans, strict=True) for a, b in found.tolist()]
        vectors = self._encode(sentences, max_length=SENTENCE_TOKENS)  # every sentence of the batch in one pass
        starts = np.cumsum([0] + [len(found) for found in spans])
        systems = self.codes_[SYSTEM].to_numpy()
        by_system = [np.flatnonzero(systems == system) for system in self.codes_[SYSTEM].unique(maintain_order=True)]
        results: list[Found] = []
        for note, code_scores in self._code_maxima(vectors, starts):
            note_vectors = vectors[starts[note] : starts[note + 1]]
            for idx in by_system:
                k = min(self.top_k, len(idx))
                chosen = idx[np.argpartition(-code_scores[idx], k - 1)[:k]]
                top = chosen[np.lexsort((chosen, -code_scores[chosen]))]  # equal scores: the code listed first
                best = self._evidence(note_vectors, top)
                results.append((*texts[note], top, code_scores[top].astype(np.float64), spans[note][best]))
        return search_frame(self.name, results, codes=self.codes_[CODE].to_numpy(), systems=systems)

    def _code_maxima(self, vectors: np.ndarray, starts: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Per note (index into ``starts``): each code's best cosine over its terms and the note's
        sentences ([n_codes]). Up to ``NOTE_BLOCK`` notes and ``SENTENCE_BLOCK`` sentences at a time (a
        longer note alone), against ``TERM_CHUNK`` terms at a time, each chunk converted from fp16 once
        per block: memory stays flat whatever the batch and the ontology."""
        note, n_notes = 0, len(starts) - 1
        while note < n_notes:
            fits = int(np.searchsorted(starts, starts[note] + SENTENCE_BLOCK, side="right")) - 1
            last = min(note + NOTE_BLOCK, max(note + 1, fits))
            bounds = starts[note : last + 1] - starts[note]
            block = vectors[starts[note] : starts[last]]
            maxima = np.empty((last - note, len(self.code_starts_)), dtype=np.float32)
            for lo, hi in pairwise(self.chunks_):
                first, end = self.code_starts_[lo], self.code_ends_[hi - 1]
                terms = _note_maxima(block, bounds, self.vectors_[first:end].astype(np.float32))
                maxima[:, lo:hi] = np.maximum.reduceat(terms, self.code_starts_[lo:hi] - first, axis=1)
            yield from enumerate(maxima, start=note)
            note = last

    def _evidence(self, note_vectors: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Per code of ``codes``: the first sentence where one of its terms reaches the code's score."""
        return np.array([np.argmax((note_vectors @ self.vectors_[self.code_starts_[code] : self.code_ends_[code]].T).max(axis=1))
                         for code in codes], dtype=np.int64)

    def save(self, path: Path) -> None:
        """Write the parameters, the encoder's sha256 and the terms (``terms.parquet``); ``load``
        reads the term vectors from the cache or embeds the terms again."""
        path.mkdir(parents=True, exist_ok=True)
        write_parquet(path / "terms.parquet", self.terms_, durable=False)
        state = {"params": self.get_params(), "encoder_sha256": self.encoder_sha256_}
        write_text(path / "dense.json", json.dumps(state), durable=False)

    @classmethod
    def load(cls, path: Path) -> DenseSearch:
        """The saved search, with the encoder it was built with (checked by sha256)."""
        state = read_state(path, "dense.json", what="dense search", also=("terms.parquet",))
        return cls(**state["params"]).index(pl.read_parquet(path / "terms.parquet"), encoder_sha256=state["encoder_sha256"])


def _note_maxima(block: np.ndarray, bounds: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """[n_notes, n_terms]: per note, each term's best cosine with one of the note's sentences (the
    note's rows ``bounds[i]:bounds[i + 1]`` of ``block``), ``SENTENCE_BLOCK`` rows multiplied at a time."""
    out = np.full((len(bounds) - 1, len(terms)), -np.inf, dtype=np.float32)
    for start in range(0, bounds[-1], SENTENCE_BLOCK):
        sims = block[start : start + SENTENCE_BLOCK] @ terms.T
        for i, (a, b) in enumerate(pairwise(bounds)):
            a, b = max(a, start), min(b, start + SENTENCE_BLOCK)
            if a < b:  # a max per note's rows: np.maximum.reduceat along axis 0 was 8x slower
                np.maximum(out[i], sims[a - start : b - start].max(axis=0), out=out[i])
    return out


def _term_chunks(code_starts: np.ndarray, n_terms: int, size: int) -> list[int]:
    """Code indexes that cut the codes into runs of at most ``size`` terms (a code with more terms alone)."""
    cuts = [0]
    while cuts[-1] < len(code_starts):
        limit = code_starts[cuts[-1]] + size
        cut = len(code_starts) if limit >= n_terms else int(np.searchsorted(code_starts, limit, side="right")) - 1
        cuts.append(max(cut, cuts[-1] + 1))
    return cuts


def _export_versions() -> dict[str, str]:
    """The packages that the int8 encoder file and the vectors made with it depend on."""
    return {"torch": version("torch"), "transformers": version("transformers"), "onnxruntime": ort.__version__}


def _encoder_session(folder: Path, sha256: str) -> ort.InferenceSession:
    """A CPU session of the encoder at ``folder`` as int8 ONNX: from the cache, else exported (and cached)."""
    key = cache_key(sources=[], salt=json.dumps({"encoder": sha256, **_export_versions()}))
    file = cache_dir() / f"sentence-{sha256[:12]}-{key[:12]}.onnx"
    if file.is_file():
        # no arena: the largest batch's activations would stay with the session for good
        return create_session(file, device="cpu", arena=False)
    from coder.export.sentence import export_sentence_encoder

    logger.info("dense search: exporting the encoder at %s to int8 ONNX (first use)", folder)
    with tempfile.TemporaryDirectory() as scratch:
        exported = Path(scratch) / "sentence.onnx"
        export_sentence_encoder(folder, exported)
        write_cache(file, lambda handle: handle.write(exported.read_bytes()), what="sentence encoder",
                    stale=f"sentence-{sha256[:12]}-*.onnx")
        return create_session(exported, device="cpu", arena=False)  # read now: an unwritable cache costs a new export next time
