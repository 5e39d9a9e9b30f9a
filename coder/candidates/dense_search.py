"""Dense search: note sentences against code terms as sentence vectors (nearest neighbours).

Every description and inclusion term of the ontology (``ontology_terms``) and every sentence of a
note becomes a unit vector of a sentence encoder (all-MiniLM-L6-v2 by default, mean pooled); a
code scores the best cosine between one of its terms and a sentence of the note. Like the TF-IDF
ontology search it reaches codes never seen in training, and it also finds them when the note words
a condition differently from the ontology. Descriptions are English, so it reads ``text``.

The packaged all-MiniLM-L6-v2 is not copied into the model folder (a model folder stays under 100 MB):
the folder records the sha256 of its files, checked on load. Any other encoder is copied into the
source's folder (``encoder/``): a folder never names a path outside itself. The note sentences may go
through a smaller student of the encoder instead (``sentence_layers``: a layers file of
``coder.candidates.sentence_encoder``, which ``coder train`` distils; 3 of all-MiniLM-L6-v2's 6 layers), which
the folder carries (``sentence_layers.safetensors``): the terms keep the encoder's vectors. What is derived from it
is built on first use (announced, with a progress bar or periodic lines), or ahead of time by
``coder prepare``, and kept in ``coder.ontology.cache``: the encoder as int8 ONNX
(``coder.candidates.sentence_encoder``, built from its weights without torch) and the term vectors (int8 with a scale per
term, a quarter of float32), made once per encoder and ontology.

The encoder quantises its activations per call, so a sentence's vector moves a little with the
sentences it is encoded beside: each note's sentences are encoded apart from every other note's (sorted
by token count within the note), so a note's scores are the same in any batch, alone or in any order.
The term vectors are made once, in a fixed order. Cosines are integer products of int8 vectors
(onnxruntime's MatMulInteger), each note's sentences with one scale of their own, each term with its
own; the rounding moves a cosine by less than 0.01 (tests).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
import polars as pl
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

from coder.candidates.base import CandidateSource
from coder.candidates.ontology_search import (
    TERM, CodeMaxima, Found, ontology_terms, ordered_terms, search_frame, stored_terms, terms_digest,
)
from coder.candidates.sentence_encoder import sentence_encoder
from coder.candidates.words import sentence_spans
from coder.cpus import compute_threads
from coder.errors import ModelBundleError, UsageError
from coder.estimator import read_state
from coder.hashing import file_sha256, folder_sha256
from coder.io.atomic import write_atomically, write_text
from coder.io.progress import Progress, announce
from coder.model.chunking import WordPieces
from coder.model.folder import default_encoder_path, inside, is_pickle
from coder.model.session import GRAPH_IR_VERSION, GRAPH_OPSET, create_session
from coder.ontology import Ontology
from coder.ontology.cache import cache_dir, cache_key, write_cache
from coder.rank import within_top
from coder.schema import CODE, NOTE_ID, SYSTEM, TEXT

if TYPE_CHECKING:
    from coder.io.corpus import Corpus

logger = logging.getLogger(__name__)

ENCODER_DIR = "encoder"  # a saved search's copy of an encoder other than the packaged one
LAYERS_FILE = "sentence_layers.safetensors"  # a saved search's copy of its sentence layers
VECTORS_VERSION = 5  # bump when the cached term vectors' layout or the way they are made changes
TERM_TOKENS = 48  # descriptions are short: 99.9% of the shipped model's terms fit
SENTENCE_TOKENS = 128
TERM_SLICE = 16_384  # terms embedded (and sorted by length) together on first use
# What first use announces it will take: a core embeds about this many terms a second
# (all-MiniLM-L6-v2 on a server core).
TERMS_PER_CORE_S = 1000
# Texts per encoder call, sorted by token count so that a batch pads little; a call's padded tokens
# are bounded because its attention scores grow with rows x length^2 (a call of the longest sentences
# set the process's peak memory).
ENCODE_BATCH = 128
ENCODE_TOKENS = 1_024
# The longest row of a batch at most this times its shortest: a note's sentences range from a few
# tokens to 128, and a batch padded to its longest row spent much of the encoder's time on padding.
ENCODE_SPREAD = 1.4
# Blocks of the search (``_code_maxima``): int32 products [SENTENCE_BLOCK, TERM_CHUNK] (4 MB, one
# buffer per call), code maxima [NOTE_BLOCK, n_codes] (24 MB for the shipped model's 189k codes) and
# a contiguous int8 chunk of terms (0.8 MB) at a time. The products are written, then read back for
# each note's maximum: blocks of 16 MB took about a third longer than these, which stay in the CPU's caches.
SENTENCE_BLOCK = 512
NOTE_BLOCK = 32
TERM_CHUNK = 2_048


class DenseSearch(CandidateSource):
    """Top codes per note and system by cosine between sentence vectors of note sentences and code terms.

    Parameters
    ----------
    name: the score column written by ``candidates`` (the candidate source's name).
    text_column: the notes column that is read (descriptions are English: ``text``).
    top_k: candidates kept per (note, system).
    encoder: a local Hugging Face sentence encoder folder; None: the packaged all-MiniLM-L6-v2.
    sentence_layers: a layers file (``coder.candidates.sentence_encoder.write_layers``) of a student distilled
        from the encoder, whose layers over the encoder's embeddings encode the note sentences (the terms
        keep the encoder's own); None: the encoder encodes both.
    """

    learns_from_notes = False
    reads_terms = True

    def __init__(self, *, name: str = "dense", text_column: str = TEXT, top_k: int = 30, encoder: str | None = None,
                 sentence_layers: str | None = None):
        self.name = name
        self.text_column = text_column
        self.top_k = top_k
        self.encoder = encoder
        self.sentence_layers = sentence_layers

    def fit(self, corpus: Corpus | None = None, *, ontology: Ontology) -> DenseSearch:
        """Embed every code's terms of ``ontology`` (``ontology_terms``); notes are not read."""
        return self.index(ontology_terms(ontology))

    def index(self, terms: pl.DataFrame, *, encoder_sha256: str | None = None, layers_sha256: str | None = None
              ) -> DenseSearch:
        """Embed ``terms`` (TERMS_SCHEMA), or read their vectors from the cache. ``encoder_sha256`` and
        ``layers_sha256``: the hashes of the encoder's files and of the sentence layers the saved search was
        built with (a mismatch is a bundle error)."""
        folder = Path(self.encoder) if self.encoder else default_encoder_path()
        if not folder.is_dir():
            raise ModelBundleError(f"dense search: encoder folder {folder} not found; install it or set the source's encoder")
        self.encoder_sha256_ = _checked(folder_sha256(folder), encoder_sha256, what=f"the encoder at {folder}",
                                        fix="install the encoder it was built with")
        built = sentence_encoder(folder, sha256=self.encoder_sha256_)
        self.built_key_ = built.key  # what the term vectors are made with
        pieces = WordPieces.read(folder)
        self.tokenizer_, self.pad_token_id_ = pieces.backend, pieces.pad_token_id
        self._backends: dict[int, Tokenizer] = {}
        # no arena: the largest batch's activations would stay with the session for good
        self.session_ = create_session(built.model, device="cpu", arena=False)
        self.sentence_session_, self.layers_sha256_ = self.session_, None
        if self.sentence_layers is not None:
            layers = Path(self.sentence_layers)
            if not layers.is_file():
                raise ModelBundleError(f"dense search: sentence layers file {layers} not found")
            self.layers_sha256_ = _checked(file_sha256(layers), layers_sha256, what=f"the sentence layers {layers}",
                                           fix="the model folder was changed: copy it again")
            student = sentence_encoder(folder, sha256=self.encoder_sha256_, layers=layers)
            self.sentence_session_ = create_session(student.model, device="cpu", arena=False)
        self.terms_, self.codes_, self.term_ptr_ = ordered_terms(terms)  # code i's terms: ptr[i]:ptr[i + 1]
        ptr = self.term_ptr_
        self.chunks_ = _term_chunks(ptr, TERM_CHUNK)
        # each chunk's codes, their terms counted from the chunk's first
        self.chunk_maxima_ = [CodeMaxima.of(ptr[lo : hi + 1] - ptr[lo]) for lo, hi in pairwise(self.chunks_)]
        vectors, self.scales_ = self._term_vectors()
        # each run of terms contiguous, as the products read it for every block of sentences (a copy per
        # block had cost a tenth of the search's products)
        self.term_blocks_ = [np.ascontiguousarray(vectors[:, ptr[lo] : ptr[hi]])
                             for lo, hi in pairwise(self.chunks_)]
        self.products_ = _products_session()
        logger.info("dense search: %d terms for %d codes", self.terms_.height, self.codes_.height)
        return self

    def _term_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``terms_`` as unit vectors in int8, one column per term ([dim, n_terms]: a chunk of terms is
        then a row slice, the right operand of the int8 products), and each term's float32 scale
        ([n_terms]; vector = int8 column x scale), cached by the encoder and the terms."""
        digest = terms_digest(self.terms_)
        key = cache_key(sources=[], salt=json.dumps({"vectors": VECTORS_VERSION, "encoder": self.built_key_,
                                                      "terms": digest, "tokens": TERM_TOKENS,
                                                      "onnxruntime": ort.__version__}))
        stem = f"dense-{self.built_key_[:12]}"
        file = cache_dir() / f"{stem}-{key[:12]}.npz"
        try:
            with np.load(file, allow_pickle=False) as arrays:
                if arrays["key"].tobytes().decode() == key and arrays["vectors"].shape[1] == self.terms_.height:
                    logger.info("dense search: term vectors from %s", file)
                    return arrays["vectors"], arrays["scales"]
        except (OSError, ValueError, KeyError, EOFError):
            pass  # missing or unusable: embedded again below
        texts = self.terms_[TERM].to_list()
        cores = compute_threads()
        announce(f"the dense search's vectors of {len(texts)} terms", seconds=len(texts) / (TERMS_PER_CORE_S * cores),
                 cores=cores)
        progress = Progress(total=len(texts), unit="term", label="dense search term vectors")
        parts = []
        # a slice of terms at a time: float32 vectors of every term at once would be 4x the int8 result
        for start in range(0, len(texts), TERM_SLICE):
            chunk = texts[start : start + TERM_SLICE]
            parts.append(quantise(self._encode(chunk, max_length=TERM_TOKENS), levels=TERM_LEVELS))
            progress.update(len(chunk))
        progress.close()
        vectors, scales = np.ascontiguousarray(np.concatenate([v for v, _ in parts]).T), np.concatenate([s for _, s in parts])
        arrays = {"key": np.frombuffer(key.encode(), dtype=np.uint8), "vectors": vectors, "scales": scales}
        # other term sets of this encoder belong to other models: kept
        write_cache(file, lambda handle: np.savez(handle, **arrays), what="term vectors")
        return vectors, scales

    def _terms(self, code: int) -> np.ndarray:
        """[n_terms, dim] float32 vectors of the terms of code ``code`` (an index into ``codes_``)."""
        block = int(np.searchsorted(self.chunks_, code, side="right")) - 1
        base, first, end = self.term_ptr_[self.chunks_[block]], self.term_ptr_[code], self.term_ptr_[code + 1]
        return self.term_blocks_[block][:, first - base : end - base].T * self.scales_[first:end, None]

    def _encode(self, texts: list[str], *, max_length: int, session: ort.InferenceSession | None = None) -> np.ndarray:
        """[len(texts), dim] float32 unit vectors from ``session`` (None: the encoder's, as the terms are
        made). Texts are tokenised once, sorted by token count
        and encoded in batches of at most ``ENCODE_BATCH`` rows and ``ENCODE_TOKENS`` padded tokens, the
        longest row within ``ENCODE_SPREAD`` times the shortest."""
        if not texts:  # nothing to encode (no terms, or a batch without sentences): no rows are read
            return np.zeros((0, 0), dtype=np.float32)
        ids = self._token_ids(texts, max_length=max_length)
        lengths = np.array([len(row) for row in ids])
        order = np.argsort(lengths, kind="stable")
        pad = self.pad_token_id_
        out: np.ndarray | None = None
        for rows in _token_batches(lengths[order], rows=ENCODE_BATCH, tokens=ENCODE_TOKENS):
            chosen = order[rows]
            width = int(lengths[chosen[-1]])  # sorted: the batch's last row is its longest
            input_ids = np.full((len(chosen), width), pad, dtype=np.int64)
            mask = np.zeros((len(chosen), width), dtype=np.int64)
            for row, index in enumerate(chosen):
                input_ids[row, : lengths[index]] = ids[index]
                mask[row, : lengths[index]] = 1
            vectors = (session or self.session_).run(None, {"input_ids": input_ids, "attention_mask": mask})[0]
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[chosen] = vectors
        assert out is not None
        return out

    def _token_ids(self, texts: list[str], *, max_length: int) -> list[list[int]]:
        """Each text's token ids with the special tokens, truncated to ``max_length``: the same ids as
        the Hugging Face tokenizer's ``__call__``, straight from its Rust tokenizer, one configured copy
        per length."""
        if (backend := self._backends.get(max_length)) is None:
            backend = Tokenizer.from_str(self.tokenizer_.to_str())
            backend.no_padding()
            backend.enable_truncation(max_length)
            self._backends[max_length] = backend
        return [encoding.ids for encoding in backend.encode_batch_fast(texts)]

    def candidates(self, notes: pl.DataFrame) -> pl.DataFrame:
        """The ``top_k`` codes per (note, system): note_id, system, code, <name>, <name>_rank,
        evidence_text/start/end (the best sentence, offsets into ``text_column``)."""
        self.check_fitted()
        texts, spans = [], []
        for note_id, text in notes.select(NOTE_ID, self.text_column).iter_rows():
            if len(found := sentence_spans(text)):
                texts.append((note_id, text))
                spans.append(found)
        starts = np.cumsum([0] + [len(found) for found in spans])
        # each note's sentences through the encoder apart from the other notes' (its activations are
        # quantised per call), then int8 with one scale per note: a note's vectors are its own
        encoded = [self._encode([text[a:b] for a, b in found.tolist()], max_length=SENTENCE_TOKENS,
                                session=self.sentence_session_) for (_, text), found in zip(texts, spans, strict=True)]
        vectors, scales = quantise(np.concatenate(encoded) if encoded else np.zeros((0, 0), dtype=np.float32), starts)
        systems = self.codes_[SYSTEM].to_numpy()
        by_system = [np.flatnonzero(systems == system) for system in self.codes_[SYSTEM].unique(maintain_order=True)]
        results: list[Found] = []
        for note, code_scores in self._code_maxima(vectors, scales, starts):
            note_vectors = vectors[starts[note] : starts[note + 1]] * scales[note]
            for idx in by_system:
                top = idx[within_top(code_scores[idx], self.top_k)]  # search_frame ranks them and cuts the ties
                best = self._evidence(note_vectors, top)
                results.append((*texts[note], top, code_scores[top].astype(np.float64), spans[note][best]))
        return search_frame(self.name, results, codes=self.codes_[CODE].to_numpy(), systems=systems, top_k=self.top_k)

    def _code_maxima(self, vectors: np.ndarray, scales: np.ndarray, starts: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Per note (index into ``starts``): each code's best cosine over its terms and the note's
        sentences ([n_codes]), from int8 sentence ``vectors`` with one scale per note. Up to
        ``NOTE_BLOCK`` notes and ``SENTENCE_BLOCK`` sentences at a time (a longer note alone), against
        ``TERM_CHUNK`` terms at a time: memory stays flat whatever the batch and the ontology. A note's
        best int32 product per term times its scale and the term's is its cosine."""
        note, n_notes = 0, len(starts) - 1
        widest = max((block.shape[1] for block in self.term_blocks_), default=0)
        buffer = np.empty(min(SENTENCE_BLOCK, len(vectors)) * widest, dtype=np.int32)  # the products, reused
        while note < n_notes:
            fits = int(np.searchsorted(starts, starts[note] + SENTENCE_BLOCK, side="right")) - 1
            last = min(note + NOTE_BLOCK, max(note + 1, fits))
            bounds = starts[note : last + 1] - starts[note]
            # the products' left operand is uint8 with zero point 128: int8 x + 128, a flip of the top bit
            block = vectors[starts[note] : starts[last]].view(np.uint8) ^ np.uint8(128)
            maxima = np.empty((last - note, self.codes_.height), dtype=np.float32)
            for (lo, hi), terms, code_maxima in zip(pairwise(self.chunks_), self.term_blocks_, self.chunk_maxima_, strict=True):
                first, end = self.term_ptr_[lo], self.term_ptr_[hi]
                best = _note_maxima(self.products_, block, bounds, terms, buffer)
                maxima[:, lo:hi] = code_maxima(best.astype(np.float32) * scales[note:last, None] * self.scales_[first:end])
            yield from enumerate(maxima, start=note)
            note = last

    def _evidence(self, note_vectors: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Per code of ``codes``: the first sentence where one of its terms reaches the code's score."""
        return np.array([np.argmax((note_vectors @ self._terms(code).T).max(axis=1)) for code in codes], dtype=np.int64)

    def save(self, path: Path) -> None:
        """Write the parameters, the digests of the encoder, the sentence layers and the terms (``dense.json``),
        a copy of an encoder other than the packaged one (``encoder/``) and of the sentence layers; ``load``
        reads the term vectors from the cache or embeds the terms again."""
        self.check_fitted()
        path.mkdir(parents=True, exist_ok=True)
        params = self.get_params()
        if self.encoder is not None:
            _copy_encoder(Path(self.encoder), path / ENCODER_DIR)
            params["encoder"] = ENCODER_DIR
        if self.sentence_layers is not None:
            layers = Path(self.sentence_layers)
            if layers.resolve() != (path / LAYERS_FILE).resolve():  # not a loaded search saved where it was loaded from
                write_atomically(path / LAYERS_FILE, lambda handle: handle.write(layers.read_bytes()), durable=False)
            params["sentence_layers"] = LAYERS_FILE
        state = {"params": params, "encoder_sha256": self.encoder_sha256_, "layers_sha256": self.layers_sha256_,
                 "terms_sha256": terms_digest(self.terms_)}
        write_text(path / "dense.json", json.dumps(state), durable=False)

    @classmethod
    def load(cls, path: Path, *, terms: pl.DataFrame | None = None) -> DenseSearch:
        """The saved search over ``terms``, with the encoder it was built with (checked by sha256): the
        packaged one, or its copy inside ``path`` (an encoder named anywhere else is refused), and its
        sentence layers, inside ``path`` too."""
        state = read_state(path, "dense.json", what="dense search")
        params = state["params"]
        for name in ("encoder", "sentence_layers"):
            if params.get(name) is not None:
                params = {**params, name: str(inside(path, params[name], what=f"{path / 'dense.json'} {name}"))}
        return cls(**params).index(stored_terms(terms, state["terms_sha256"], what=f"dense search {path}"),
                                   encoder_sha256=state["encoder_sha256"], layers_sha256=state.get("layers_sha256"))


def _checked(found: str, built_with: str | None, *, what: str, fix: str) -> str:
    """``found``, the sha256 of ``what``, unless the saved search was built with another (``built_with``): then
    a bundle error that says the ``fix``."""
    if built_with is not None and built_with != found:
        raise ModelBundleError(f"dense search: {what} has sha256 {found[:12]}…, the model was built with "
                               f"{built_with[:12]}…; {fix}")
    return found


def _copy_encoder(source: Path, target: Path) -> None:
    """Replace ``target`` by a copy of the encoder folder ``source``, which may hold no pickle (a model
    folder never does); nothing to do when ``source`` is ``target`` (a loaded search saved again)."""
    if target.exists() and source.resolve() == target.resolve():
        return
    files = sorted(file for file in source.rglob("*") if file.is_file())
    pickles = [file.relative_to(source).as_posix() for file in files if is_pickle(file)]
    if pickles:
        raise UsageError(f"dense search: the encoder at {source} holds pickle files ({', '.join(pickles)}), which a "
                         "model folder may not; give an encoder folder with safetensors weights")
    shutil.rmtree(target, ignore_errors=True)
    for file in files:
        copy = target / file.relative_to(source)
        copy.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(copy, lambda handle, file=file: handle.write(file.read_bytes()), durable=False)


def _note_maxima(products: ort.InferenceSession, block: np.ndarray, bounds: np.ndarray, terms: np.ndarray,
                 buffer: np.ndarray) -> np.ndarray:
    """[n_notes, n_terms] int32: per note, each term's best product with one of the note's sentences
    (the note's rows ``bounds[i]:bounds[i + 1]`` of ``block``, uint8), ``SENTENCE_BLOCK`` rows
    multiplied at a time by the int8 ``terms`` ([dim, n_terms]). The products are written into
    ``buffer``: onnxruntime allocating each block's output left the process's memory growing."""
    out = np.full((len(bounds) - 1, terms.shape[1]), np.iinfo(np.int32).min, dtype=np.int32)
    binding = products.io_binding()
    binding.bind_cpu_input("terms", terms)
    for start in range(0, bounds[-1], SENTENCE_BLOCK):
        rows = block[start : start + SENTENCE_BLOCK]
        sims = buffer[: len(rows) * terms.shape[1]].reshape(len(rows), terms.shape[1])
        binding.bind_cpu_input("sentences", rows)
        binding.bind_output("products", "cpu", 0, np.int32, sims.shape, sims.ctypes.data)
        products.run_with_iobinding(binding)
        for i, (a, b) in enumerate(pairwise(bounds)):
            a, b = max(a, start), min(b, start + SENTENCE_BLOCK)
            if a < b:  # a max per note's rows: np.maximum.reduceat along axis 0 was slower
                np.maximum(out[i], sims[a - start : b - start].max(axis=0), out=out[i])
    return out


# Term vectors (the s8 side of the products) use 7 bits: on CPUs without int8 dot-product
# instructions (AVX2 alone) onnxruntime's u8 x s8 kernel adds pairs of products in saturating
# int16, and 255 x 63 x 2 stays below 32,767 where 255 x 127 x 2 does not.
TERM_LEVELS = 63


def quantise(vectors: np.ndarray, bounds: np.ndarray | None = None, *, levels: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 in [-levels, levels] with one float32 scale per group of rows
    ``bounds[i]:bounds[i + 1]`` (default: per row): (int8 [n, dim], scale [n_groups]), a row ~ its
    int8 row x its group's scale."""
    bounds = np.arange(len(vectors) + 1) if bounds is None else bounds
    peaks = np.maximum.reduceat(np.abs(vectors).max(axis=1, initial=0.0), bounds[:-1]) if len(vectors) else np.zeros(0)
    scales = np.where(peaks > 0, peaks / levels, 1.0).astype(np.float32)  # an all-zero group stays zero
    return np.rint(vectors / np.repeat(scales, np.diff(bounds))[:, None]).astype(np.int8), scales


def _products_session() -> ort.InferenceSession:
    """onnxruntime's integer matmul, sentences (uint8, zero point 128) x terms (int8) -> int32: its
    u8 x s8 kernels use the CPU's int8 dot-product instructions where it has them (numpy has no int8
    matmul of its own)."""
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["sentences", "terms", "zero_point"], ["products"])], "dense_products",
        [helper.make_tensor_value_info("sentences", TensorProto.UINT8, [None, None]),
         helper.make_tensor_value_info("terms", TensorProto.INT8, [None, None])],
        [helper.make_tensor_value_info("products", TensorProto.INT32, [None, None])],
        initializer=[numpy_helper.from_array(np.array(128, dtype=np.uint8), "zero_point")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", GRAPH_OPSET)])
    model.ir_version = GRAPH_IR_VERSION
    return create_session(model.SerializeToString(), device="cpu", arena=False)


def _token_batches(lengths: np.ndarray, *, rows: int, tokens: int, spread: float = ENCODE_SPREAD) -> Iterator[slice]:
    """Consecutive slices of ``lengths`` (ascending token counts): each as many rows as fit in ``rows``,
    in ``tokens`` once padded to its longest row, and within ``spread`` times its shortest row's length
    (a row longer than ``tokens`` alone)."""
    start = 0
    while start < len(lengths):
        window = lengths[start : start + rows]  # ascending: padded size k * window[k - 1] grows with k
        fits = (np.arange(1, len(window) + 1) * window <= tokens) & (window <= spread * window[0])
        fit = max(int(np.count_nonzero(fits)), 1)
        yield slice(start, start + fit)
        start += fit


def _term_chunks(ptr: np.ndarray, size: int) -> list[int]:
    """Code indexes that cut the codes (code i's terms ``ptr[i]:ptr[i + 1]``) into runs of at most ``size`` terms
    (a code with more terms alone)."""
    n_codes = len(ptr) - 1
    cuts = [0]
    while cuts[-1] < n_codes:
        limit = ptr[cuts[-1]] + size
        cut = n_codes if limit >= ptr[-1] else int(np.searchsorted(ptr[:-1], limit, side="right")) - 1
        cuts.append(max(cut, cuts[-1] + 1))
    return cuts
