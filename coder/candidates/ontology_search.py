"""Ontology search: note sentences matched against code descriptions and inclusion terms.

The only candidate source for codes never seen in training. Descriptions are English, so the
search reads the English ``text`` column. Each sentence and each term become TF-IDF vectors
(word 1-2-grams plus character n-grams inside words, which catch inflections and compounds);
a code scores the best cosine between any of its terms and any sentence of the note. Only the
codes that can reach a note's top k are scored exactly: a term's cosine with the elementwise
maximum of the note's sentence vectors bounds its cosine with each sentence (``_top_codes``).

The cosine favours terms as long as the sentence: a one-word term ("Hypertelorism") found in a
long sentence scores low, and such codes, often never seen in training, fall out of the top k. The
``coverage`` measure scores instead the share of a term's TF-IDF weight that one sentence holds
(its features present or not), so a term wholly found in a sentence scores 1 whatever the
sentence's length. Two searches of the same terms, one per measure, share one index in a process.

Fitting the index on the whole ontology's terms takes time and memory, so ``fit`` and ``load`` keep the
fitted index (vocabularies, idf, float32 term matrix) in the cache folder of ``coder.ontology.cache``,
keyed on the terms' content, as one npz read without pickle.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import scipy
import sklearn
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion

from coder.candidates.base import CandidateSource
from coder.candidates.mentions import expand_links
from coder.candidates.words import sentence_spans
from coder.cpus import capped, logical_cpus
from coder.errors import ModelBundleError, UsageError
from coder.estimator import read_state
from coder.ontology import Ontology
from coder.ontology.cache import cache_dir, write_cache
from coder.io.atomic import write_text
from coder.io.progress import announce
from coder.rank import score_rank, within_top
from coder.schema import CM, CODE, EVIDENCE_COLUMNS, NOTE_ID, PCS, SYSTEM, TEXT

if TYPE_CHECKING:
    from coder.io.corpus import Corpus

logger = logging.getLogger(__name__)

TERM = "term"
TERMS_SCHEMA = pl.Schema({SYSTEM: pl.String, CODE: pl.String, TERM: pl.String})
PCS_PREFIX_LENGTH = 4  # CodiEsp often cuts PCS codes to their first 4 axes
INDEX_VERSION = 1  # bump when the cached index's layout or the way it is fitted changes
INDEX_TERMS_S = 10_000  # terms indexed a second, for the announced duration of a first use
# Codes of a system first scored exactly, as a multiple of top_k (grown 4x while the bounds of the
# codes left out allow one of them into the top k).
EXACT_FIRST = 4
# Sentence-by-term similarities held at once (64 MB of float32).
SIMILARITY_BUDGET = 16_000_000
_NONE = np.iinfo(np.int64).max  # "no such sentence" in a minimum over terms
MEASURES = ("cosine", "coverage")
# Characters of note text vectorised in one call: one call per note cost more than the product.
TEXT_BUDGET = 200_000
# Characters of notes whose sentence vectors are kept for the next search of them (``_SentenceMemo``):
# ~13 bytes of vectors a character, so ~52 MB; a batch of 256 CodiEsp notes holds ~520k characters.
MEMO_CHARS = 4_000_000
# Most threads for candidates() (fewer on fewer CPUs); each holds at most SIMILARITY_BUDGET similarities.
SEARCH_THREADS = 4


@functools.lru_cache(maxsize=4)
def ontology_terms(ontology: Ontology, *, systems: tuple[str, ...] = (CM, PCS)) -> pl.DataFrame:
    """Every code's searchable terms (TERMS_SCHEMA): its description and CM inclusion terms;
    for PCS also the 4-axis prefixes that CodiEsp codes with. Once per ontology (an ontology does not
    change) and systems: ``coder train`` fits the sources that read them on every fold."""
    rows: list[tuple[str, str, str]] = []
    for system in systems:
        codes = list(ontology.codes(system))
        if system == PCS:
            codes += sorted({code[:PCS_PREFIX_LENGTH] for code in codes})
        for code in codes:
            rows.append((system, code, ontology.description(code, system)))
            if system == CM:
                rows.extend((system, code, term) for term in ontology.inclusion_terms(code))
    return pl.DataFrame(rows, schema=TERMS_SCHEMA, orient="row").filter(pl.col(TERM) != "").unique(maintain_order=True)


def terms_digest(terms: pl.DataFrame) -> str:
    """sha256 of ``terms``' rows in their order: the key of what is built from them, and what a saved
    source records to check that it loads the terms it was fitted on. Column by column, each value's UTF-8
    bytes after every value's byte length (-1: null), so that no two tables share a digest; a model load checks
    it for each source that reads terms, in milliseconds (a JSON of the rows took 0.3 s)."""
    digest = hashlib.sha256()
    for name in terms.columns:
        values = terms[name].cast(pl.String)
        digest.update(json.dumps([name, terms.height]).encode())
        digest.update(values.str.len_bytes().cast(pl.Int64).fill_null(-1).to_numpy().astype("<i8").tobytes())
        digest.update(values.str.join("").item().encode())
    return digest.hexdigest()


def stored_terms(terms: pl.DataFrame | None, digest: str, *, systems: tuple[str, ...] = (CM, PCS), what: str
                 ) -> pl.DataFrame:
    """The rows of ``systems`` of a model folder's stored ``terms`` (``terms.parquet``), which must be
    the terms a saved source was fitted on (``digest``); ``what`` names the source in the error."""
    own = None if terms is None else terms.filter(pl.col(SYSTEM).is_in(systems))
    if own is None or terms_digest(own) != digest:
        raise ModelBundleError(f"{what}: the model folder's terms.parquet is missing or not the terms it was fitted "
                               "on; copy the whole model folder again or rebuild it with `coder train`")
    return own


def ordered_terms(terms: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray]:
    """``terms`` (TERMS_SCHEMA) grouped by code, the codes (system, code) in first-seen order, and
    their terms' boundaries ``ptr`` [n_codes + 1]: code i's terms are ``ptr[i]:ptr[i + 1]`` (``CodeMaxima``
    takes per-code maxima over them)."""
    codes = terms.select(SYSTEM, CODE).unique(maintain_order=True).with_row_index("code_index")
    ordered = terms.join(codes, on=[SYSTEM, CODE], how="left").sort("code_index", maintain_order=True)
    starts = np.searchsorted(ordered["code_index"].to_numpy(), np.arange(codes.height))
    return ordered.select(SYSTEM, CODE, TERM), codes.drop("code_index"), np.append(starts, ordered.height)


@dataclass(frozen=True)
class CodeMaxima:
    """Each code's maximum over its terms' values, codes' terms being consecutive runs (``ordered_terms``): a
    gather for the codes with one term, a reduceat over the others' terms alone. Most codes have one term (6,805
    of the shipped model's 188,660 have more); a reduceat over every term took about three times as long."""

    firsts: np.ndarray
    """[n_codes] each code's first term."""
    several: np.ndarray
    """The codes with more than one term."""
    terms: np.ndarray
    """Their terms, code after code."""
    starts: np.ndarray
    """Where each of them begins in ``terms``."""

    @classmethod
    def of(cls, ptr: np.ndarray) -> CodeMaxima:
        """Codes whose terms are ``ptr[i]:ptr[i + 1]``."""
        lengths = np.diff(ptr)
        several = np.flatnonzero(lengths > 1)
        _, terms = expand_links(ptr, several)
        return cls(firsts=ptr[:-1], several=several, terms=terms, starts=np.cumsum(lengths[several]) - lengths[several])

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """[..., n_codes] the maximum of ``values`` [..., n_terms] over each code's terms."""
        out = values[..., self.firsts]
        if len(self.several):
            out[..., self.several] = np.maximum.reduceat(values[..., self.terms], self.starts, axis=-1)
        return out


Found = tuple[str, str, np.ndarray, np.ndarray, np.ndarray]
"""A note's search result in one system: note id, text, the indexes of its best codes (``within_top``: ties
at the cut included, in any order), their scores, their evidence spans [k, 2]."""


def search_frame(name: str, found: list[Found], *, codes: np.ndarray, systems: np.ndarray, top_k: int) -> pl.DataFrame:
    """One frame of every note's ``top_k`` codes by ``score_rank`` (``search_schema``), in note, system,
    rank order: note_id, system, code, <name>, <name>_rank, evidence_text/start/end."""
    schema = search_schema(name)
    if not any(len(top) for _, _, top, _, _ in found):
        return pl.DataFrame(schema=schema)
    top = np.concatenate([top for _, _, top, _, _ in found])
    spans = np.concatenate([spans for _, _, _, _, spans in found])
    rank = f"{name}_rank"
    frame = pl.DataFrame({
        "_found": np.repeat(np.arange(len(found)), [len(top_) for _, _, top_, _, _ in found]),
        NOTE_ID: [note_id for note_id, _, top_, _, _ in found for _ in range(len(top_))],
        SYSTEM: systems[top].tolist(), CODE: codes[top].tolist(),
        name: np.concatenate([scores for _, _, _, scores, _ in found]),
        "evidence_start": spans[:, 0], "evidence_end": spans[:, 1],
    }).with_columns(score_rank(name).alias(rank)).filter(pl.col(rank) <= top_k).sort("_found", rank)
    evidence = [found[i][1][a:b] for i, a, b in frame.select("_found", "evidence_start", "evidence_end").iter_rows()]
    return frame.with_columns(pl.Series("evidence_text", evidence, dtype=pl.String)).select(schema.names()).cast(dict(schema))


def search_schema(name: str) -> pl.Schema:
    return pl.Schema({NOTE_ID: pl.String, SYSTEM: pl.String, CODE: pl.String, name: pl.Float64,
                      f"{name}_rank": pl.Int32, **EVIDENCE_COLUMNS})


class OntologySearch(CandidateSource):
    """Top codes per note and system by TF-IDF cosine between note sentences and code terms.

    Parameters
    ----------
    text_column: the notes column that is read (descriptions are English: ``text``).
    name: the score column written by ``candidates`` (the candidate source's name).
    top_k: candidates kept per (note, system).
    char_ngrams: character n-gram lengths inside words; None uses words only.
    max_postings: a feature (word or character n-gram) found in more terms than this is left out of
        the term matrix; None keeps all. Such features (``tion``, ``of``) carry little weight but most
        of the sparse product's work (the index logs the share left out).
    measure: ``cosine`` (a sentence's and a term's TF-IDF vectors) or ``coverage`` (the share of a
        term's TF-IDF weight whose features a sentence has; see the module's docstring).
    backfill: also score the codes the other sources propose (``score``, ``coder.candidates.backfill``).
    """

    learns_from_notes = False
    reads_terms = True

    def __init__(self, *, name: str = "ontology", text_column: str = TEXT, top_k: int = 30,
                 char_ngrams: tuple[int, int] | None = (4, 5), max_postings: int | None = 20_000,
                 measure: str = "cosine", backfill: bool = True):
        self.text_column = text_column
        self.name = name
        self.top_k = top_k
        self.char_ngrams = char_ngrams
        self.max_postings = max_postings
        self.measure = measure
        self.backfill = backfill

    def _vectorizer(self, vocabularies: Sequence[list[str] | None] = (None, None)) -> FeatureUnion | TfidfVectorizer:
        """The unfitted vectorizer, or with ``vocabularies`` (words, chars) one whose parts only need their idf."""
        words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, strip_accents="unicode", stop_words="english",
                                vocabulary=vocabularies[0])
        if self.char_ngrams is None:
            return words
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(self.char_ngrams), sublinear_tf=True,
                                strip_accents="unicode", min_df=2, vocabulary=vocabularies[1])
        return FeatureUnion([("words", words), ("chars", chars)])

    def fit(self, corpus: Corpus | None = None, *, ontology: Ontology) -> OntologySearch:
        """Index every code's terms of ``ontology`` (``ontology_terms``), or take their index from the
        cache (``_cached_index``); notes are not read."""
        return self._cached_index(ontology_terms(ontology))

    def index(self, terms: pl.DataFrame) -> OntologySearch:
        """Index ``terms`` (TERMS_SCHEMA)."""
        self._order_terms(terms)
        return self._index_ordered()

    def _index_ordered(self) -> OntologySearch:
        """Fit the index of the terms ``_order_terms`` has set."""
        texts = self.terms_[TERM].to_list()
        self.vectorizer_ = self._vectorizer().fit(texts)
        # [n_features, n_terms], float32 CSR: a sentence-times-terms product is faster this way round
        matrix = _unit_rows(self.vectorizer_.transform(texts)).T.tocsr().astype(np.float32)
        if self.max_postings is not None:
            keep = np.diff(matrix.indptr) <= self.max_postings
            kept = (sparse.diags(keep.astype(np.float32)) @ matrix).tocsr()
            kept.eliminate_zeros()
            logger.info("ontology search: %d features found in more than %d terms left out (%.0f%% of the term matrix)",
                        (~keep).sum(), self.max_postings, 100 * (1 - kept.nnz / max(matrix.nnz, 1)))
            matrix = kept
        self._set_matrix(matrix)
        logger.info("ontology search: %d terms for %d codes", self.terms_.height, self.codes_.height)
        return self

    def _set_matrix(self, matrix: sparse.csr_matrix, by_term: sparse.csr_matrix | None = None) -> None:
        """The term matrix [n_features, n_terms] (bounds: a note's features against every term), its
        transpose ``by_term_`` (exact scores: a few terms against a note's sentences; 0.3 s, so
        derived on load rather than cached) and ``term_scale_``, what each term's products are
        multiplied by (coverage: 1 / the term's summed weights; cosine: None)."""
        self.term_matrix_ = matrix
        if by_term is None:
            by_term = matrix.T.tocsr()
            by_term.sort_indices()
        self.by_term_ = by_term
        self.term_scale_ = None
        if self.measure == "coverage":
            total = np.asarray(by_term.sum(axis=1), dtype=np.float32).ravel()
            self.term_scale_ = np.divide(1.0, total, out=np.zeros_like(total), where=total > 0)

    def _order_terms(self, terms: pl.DataFrame) -> None:
        """Check the measure (every way to an index starts here), then keep ``terms`` grouped by code
        (``ordered_terms``)."""
        if self.measure not in MEASURES:
            raise UsageError(f"ontology search measure must be one of {MEASURES}, got {self.measure!r}")
        self.terms_, self.codes_, self.term_ptr_ = ordered_terms(terms)  # code i's terms: ptr[i]:ptr[i + 1]
        self.code_maxima_ = CodeMaxima.of(self.term_ptr_)

    def candidates(self, notes: pl.DataFrame) -> pl.DataFrame:
        """The ``top_k`` codes per (note, system): note_id, system, code, <name>, <name>_rank,
        evidence_text/start/end (the best sentence, offsets into ``text_column``). In threads (``_threaded``)."""
        return self._threaded(self._candidates, notes)

    def score(self, notes: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
        """The exact score of each (note_id, system, code) of ``keys`` whose code the index holds and
        whose note has text: note_id, system, code, <name>. In threads, as ``candidates``."""
        wanted = keys.join(self.codes_.with_row_index("_code"), on=[SYSTEM, CODE]).group_by(NOTE_ID, maintain_order=True)
        groups = {note_id: np.asarray(codes, dtype=np.int64) for note_id, codes in wanted.agg("_code").iter_rows()}
        notes = notes.filter(pl.col(NOTE_ID).is_in(list(groups)))
        return self._threaded(functools.partial(self._score, groups), notes)

    def _score(self, groups: dict[str, np.ndarray], notes: pl.DataFrame) -> pl.DataFrame:
        """``score`` of ``notes``: ``groups`` holds each note's codes (indexes into ``codes_``)."""
        note_ids, codes, scores = [], [np.zeros(0, dtype=np.int64)], [np.zeros(0)]
        for note_id, _, _, sentences in self._sentence_vectors(notes):
            codes.append(groups[note_id])
            scores.append(self._exact(sentences.T.tocsr(), codes[-1])[0])
            note_ids += [note_id] * len(codes[-1])
        return self.codes_[np.concatenate(codes)].select(
            pl.Series(NOTE_ID, note_ids, dtype=pl.String), SYSTEM, CODE, pl.Series(self.name, np.concatenate(scores), dtype=pl.Float64))

    def _threaded(self, work: Callable[[pl.DataFrame], pl.DataFrame], notes: pl.DataFrame) -> pl.DataFrame:
        """``work`` over ``notes`` split across up to ``SEARCH_THREADS`` threads, no more than the
        process's CPUs (``coder.cpus``; scipy's sparse products release the GIL);
        each note's rows do not depend on the others, so the output is the same as in one thread."""
        self.check_fitted()
        workers = capped(min(SEARCH_THREADS, logical_cpus()))
        threads = min(workers, notes.height)
        if threads < 2:
            return work(notes)
        size = -(-notes.height // threads)
        parts = [notes.slice(start, size) for start in range(0, notes.height, size)]
        return pl.concat(_pool(os.getpid(), workers).map(work, parts))

    def _candidates(self, notes: pl.DataFrame) -> pl.DataFrame:
        codes = self.codes_[CODE].to_numpy()
        systems = self.codes_[SYSTEM].to_numpy()
        by_system = {system: np.flatnonzero(systems == system) for system in self.codes_[SYSTEM].unique(maintain_order=True)}
        found: list[Found] = []
        for note_id, text, spans, sentences in self._sentence_vectors(notes):
            # Weights are >= 0, so a term's cosine with the elementwise maximum of the note's
            # sentence vectors bounds its cosine with each sentence: one sparse row against the
            # terms instead of every sentence against every term.
            features, peak = _peak(sentences)
            bounds = self.code_maxima_(self._scaled(self.term_matrix_[features].T @ peak))
            by_feature = sentences.T.tocsr()  # [n_features, n_sentences]
            for idx in by_system.values():
                top, scores, sentence = self._top_codes(by_feature, bounds, idx)
                found.append((note_id, text, top, scores, spans[sentence]))
        return search_frame(self.name, found, codes=codes, systems=systems, top_k=self.top_k)

    def _top_codes(self, by_feature: sparse.csr_matrix, bounds: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``top_k`` codes of ``idx`` with a score > 0 and those tied with the k-th (``within_top``,
        for ``search_frame`` to rank and cut), with their scores and evidence sentences. Codes are scored
        exactly in decreasing order of their ``bounds``, more of them while a code left out could still
        reach the k-th score: the same codes and scores as scoring all of them."""
        size = min(EXACT_FIRST * self.top_k, len(idx))
        while True:
            if size < len(idx):
                order = np.argpartition(-bounds[idx], size)
                chosen, rest = idx[order[:size]], bounds[idx[order[size]]]
            else:
                chosen, rest = idx, 0.0
            scores, sentence = self._exact(by_feature, chosen)
            k = min(self.top_k, len(chosen))
            kth = np.partition(scores, len(scores) - k)[len(scores) - k] if k else 0.0
            # a bound is a sum in another order than the score it bounds: allow for rounding
            if rest <= 0 or rest * (1 + 1e-5) < kth:
                break
            size = min(4 * size, len(idx))
        top = np.flatnonzero(within_top(scores, self.top_k) & (scores > 0))
        return chosen[top], scores[top], sentence[top]

    def _exact(self, by_feature: sparse.csr_matrix, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per code of ``codes``: the best cosine between one of its terms and a sentence, and the
        first sentence where a term reaches it. Similarities are held ``SIMILARITY_BUDGET`` at a time."""
        lengths = self.term_ptr_[codes + 1] - self.term_ptr_[codes]
        firsts = np.cumsum(lengths) - lengths  # where each code's terms begin in ``terms``
        _, terms = expand_links(self.term_ptr_, codes)
        term_best = np.empty(len(terms), dtype=np.float32)
        term_first = np.empty(len(terms), dtype=np.int64)
        block = max(1, SIMILARITY_BUDGET // max(by_feature.shape[1], 1))
        for start in range(0, len(terms), block):
            sims = (self.by_term_[terms[start : start + block]] @ by_feature).toarray()  # [terms, sentences]
            sims = self._scaled(sims, terms[start : start + block])
            first = sims.argmax(axis=1)
            term_first[start : start + len(sims)] = first
            term_best[start : start + len(sims)] = sims[np.arange(len(sims)), first]
        best = np.maximum.reduceat(term_best, firsts)
        reaches = term_best == np.repeat(best, lengths)
        return best, np.minimum.reduceat(np.where(reaches, term_first, _NONE), firsts)

    def _scaled(self, products: np.ndarray, terms: np.ndarray | None = None) -> np.ndarray:
        """Products of sentences with every term (``terms``: with these, one row each) as the measure's scores."""
        if self.term_scale_ is None:
            return products
        scale = self.term_scale_ if terms is None else self.term_scale_[terms, None]
        return products * scale

    def _sentence_vectors(self, notes: pl.DataFrame) -> Iterator[tuple[str, str, np.ndarray, sparse.csr_matrix]]:
        """Per note with sentences: id, text, sentence spans [n_sentences, 2] and sentence vectors
        [n_sentences, n_features] (float32; cosine: unit length, coverage: 1 for each feature
        present), vectorised ``TEXT_BUDGET`` characters at a time."""
        group: list[tuple[str, str, np.ndarray]] = []
        size = 0
        for note_id, text in notes.select(NOTE_ID, self.text_column).iter_rows():
            spans = sentence_spans(text)
            if not len(spans):
                continue
            if group and size + len(text) > TEXT_BUDGET:
                yield from self._vectorise(group)
                group, size = [], 0
            group.append((note_id, text, spans))
            size += len(text)
        yield from self._vectorise(group)

    def _vectorise(self, group: list[tuple[str, str, np.ndarray]]) -> Iterator[tuple[str, str, np.ndarray, sparse.csr_matrix]]:
        """``_sentence_vectors`` of a group of notes (id, text, spans), one vectorizer call for those
        not in the memo (``_SentenceMemo``)."""
        if not group:
            return
        vectors = sparse.vstack(_sentence_memo(self.vectorizer_).vectors(self.vectorizer_, group), format="csr")
        if self.measure == "coverage":  # features present or not: no norms to compute
            vectors = vectors.astype(np.float32)  # a copy: the memo's vectors stay as they are
            vectors.data[:] = 1.0
        else:
            vectors = _unit_rows(vectors).astype(np.float32)
        offset = 0
        for note_id, text, spans in group:
            yield note_id, text, spans, vectors[offset : offset + len(spans)]
            offset += len(spans)

    def save(self, path: Path) -> None:
        """Write the parameters and the digest of the indexed terms (``search.json``); ``load`` indexes
        the model's stored terms again or reads the index from the cache."""
        path.mkdir(parents=True, exist_ok=True)
        write_text(path / "search.json", json.dumps({"params": self.get_params(), "terms_sha256": terms_digest(self.terms_)}),
                   durable=False)

    @classmethod
    def load(cls, path: Path, *, terms: pl.DataFrame | None = None) -> OntologySearch:
        """The saved search over ``terms``; its fitted index comes from the cache when the terms, the fitting
        code and the packages are those it was built with, else it is fitted and cached (``_cached_index``)."""
        state = read_state(path, "search.json", what="ontology search")
        params = state["params"]
        if params["char_ngrams"] is not None:
            params["char_ngrams"] = tuple(params["char_ngrams"])
        return cls(**params)._cached_index(stored_terms(terms, state["terms_sha256"], what=f"ontology search {path}"))

    def _cached_index(self, terms: pl.DataFrame) -> OntologySearch:
        """``index(terms)``, unless a search of the same terms (the other measure) holds their index in
        this process, or the cache folder (``coder.ontology.cache``) holds it from an earlier fit with the
        same fitting code and packages; a fitted index is written there."""
        self._order_terms(terms)
        terms_hash = terms_digest(self.terms_)
        key = hashlib.sha256(f"{self._index_salt()}\0{terms_hash}".encode()).hexdigest()
        # Named by the terms too, so that an index of the same terms built by older code or packages
        # is found and removed; other terms' indexes stay.
        stem = f"search-{terms_hash[:12]}"
        file = cache_dir() / f"{stem}-{key[:12]}.npz"
        shared = _SHARED.get(key)
        if shared is not None:
            self.vectorizer_ = shared.vectorizer
            self._set_matrix(shared.matrix, shared.by_term)
        elif (index := self._read_index(file, key=key, n_terms=self.terms_.height)) is None:
            announce(f"the ontology search's index of {terms.height} terms", seconds=terms.height / INDEX_TERMS_S)
            self._index_ordered()  # the terms are ordered above, for their hash
            arrays = self._index_arrays(key)
            write_cache(file, lambda handle: np.savez(handle, **arrays), what="search index", stale=f"{stem}-*.npz")
        else:
            self.vectorizer_, matrix = index
            self._set_matrix(matrix)
            logger.info("ontology search: %d terms for %d codes, index from %s", self.terms_.height, self.codes_.height, file)
        # held by the search, so the entry lives as long as one search of these terms does
        self.shared_index_ = _SHARED.setdefault(key, _Index(self.vectorizer_, self.term_matrix_, self.by_term_))
        return self

    def _index_salt(self) -> str:
        """What the fitted index depends on besides the terms."""
        return json.dumps({"index": INDEX_VERSION, "char_ngrams": self.char_ngrams, "max_postings": self.max_postings,
                           "sklearn": sklearn.__version__,
                           "scipy": scipy.__version__, "numpy": np.__version__})

    def _index_arrays(self, key: str) -> dict[str, np.ndarray]:
        """The fitted index as arrays: header (the key and vocabularies as UTF-8 JSON), per
        vectorizer part its idf, and the term matrix."""
        parts = _tfidf_parts(self.vectorizer_)
        vocabularies = [sorted(part.vocabulary_, key=part.vocabulary_.__getitem__) for part in parts]
        header = json.dumps({"key": key, "vocabularies": vocabularies}, ensure_ascii=False).encode()
        matrix = self.term_matrix_
        arrays = {"header": np.frombuffer(header, dtype=np.uint8), "data": matrix.data, "indices": matrix.indices,
                  "indptr": matrix.indptr, "shape": np.array(matrix.shape)}
        return arrays | {f"idf{i}": part.idf_ for i, part in enumerate(parts)}

    def _read_index(self, file: Path, *, key: str, n_terms: int) -> tuple[FeatureUnion | TfidfVectorizer, sparse.csr_matrix] | None:
        """The vectorizer and term matrix cached in ``file`` when it holds ``key``, else None."""
        if not file.is_file():
            return None
        try:
            with np.load(file, allow_pickle=False) as arrays:
                header = json.loads(arrays["header"].tobytes())
                if header["key"] != key:
                    raise ValueError("it has another key")
                vectorizer = self._vectorizer(header["vocabularies"])
                for i, part in enumerate(_tfidf_parts(vectorizer)):
                    part.idf_ = arrays[f"idf{i}"]
                matrix = sparse.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=tuple(arrays["shape"]))
            if matrix.shape[1] != n_terms:
                raise ValueError(f"it indexes {matrix.shape[1]} terms, not {n_terms}")
        except (OSError, ValueError, KeyError, EOFError) as error:
            logger.warning("search index %s is unusable (%s); refitting", file, error)
            return None
        return vectorizer, matrix


@dataclass(frozen=True)
class _Index:
    """A loaded index: what two searches of the same terms share (the term matrix is ~240 MB in
    memory with its transpose for the shipped ontology)."""

    vectorizer: FeatureUnion | TfidfVectorizer
    matrix: sparse.csr_matrix
    by_term: sparse.csr_matrix


_SHARED: weakref.WeakValueDictionary[str, _Index] = weakref.WeakValueDictionary()
"""Cache key -> the index loaded for it, while a search holds it."""


@functools.cache
def _pool(pid: int, threads: int) -> ThreadPoolExecutor:
    """The process's search threads, kept for its life. Fresh threads on every call took fresh
    malloc arenas and RSS grew with every batch; the same threads keep it flat. Keyed by ``pid`` so that a forked child makes its own."""
    return ThreadPoolExecutor(threads, thread_name_prefix=f"ontology-search-{pid}")


class _SentenceMemo:
    """The TF-IDF vectors of the sentences of the notes vectorised last, by note (id and text). In a
    batch the cosine and coverage searches (one vectorizer) each vectorise every note for their
    candidates and again for the backfill (``score``): one transform serves the four (a sentence's
    vector does not depend on the sentences beside it). Keyed by id too, so that a dump repeating a
    text under new ids (the benchmarks' cycled notes) is vectorised again in each batch, as before the
    memo. Holds at most ``MEMO_CHARS`` characters of notes, the oldest dropped first; its own lock, as
    the searches' threads vectorise at once."""

    def __init__(self) -> None:
        self._held: OrderedDict[tuple[str, str], sparse.csr_matrix] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def vectors(self, vectorizer: FeatureUnion | TfidfVectorizer, group: list[tuple[str, str, np.ndarray]]) -> list[sparse.csr_matrix]:
        """Per note of ``group`` (id, text, sentence spans): its sentences' vectors [n_sentences, n_features]."""
        with self._lock:
            found = {(note_id, text): self._held[note_id, text] for note_id, text, _ in group if (note_id, text) in self._held}
        missing = {(note_id, text): spans for note_id, text, spans in group if (note_id, text) not in found}
        if missing:
            matrix = vectorizer.transform([text[a:b] for (_, text), spans in missing.items() for a, b in spans.tolist()]).tocsr()
            ends = np.cumsum([len(spans) for spans in missing.values()])
            made = {note: matrix[end - len(spans) : end] for (note, spans), end in zip(missing.items(), ends, strict=True)}
            found |= made
            with self._lock:
                for note, vectors in made.items():
                    if note not in self._held:
                        self._chars += len(note[1])
                    self._held[note] = vectors
                while self._chars > MEMO_CHARS:
                    self._chars -= len(self._held.popitem(last=False)[0][1])
        return [found[note_id, text] for note_id, text, _ in group]


_MEMOS: weakref.WeakKeyDictionary[FeatureUnion | TfidfVectorizer, _SentenceMemo] = weakref.WeakKeyDictionary()
_MEMOS_LOCK = threading.Lock()


def _sentence_memo(vectorizer: FeatureUnion | TfidfVectorizer) -> _SentenceMemo:
    """The memo of ``vectorizer`` (shared by the searches that share it; freed with it)."""
    with _MEMOS_LOCK:
        return _MEMOS.setdefault(vectorizer, _SentenceMemo())


def _tfidf_parts(vectorizer: FeatureUnion | TfidfVectorizer) -> list[TfidfVectorizer]:
    return [part for _, part in vectorizer.transformer_list] if isinstance(vectorizer, FeatureUnion) else [vectorizer]



def _peak(vectors: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """The features present in ``vectors`` (rows, weights >= 0), ascending, and each one's largest weight: their
    elementwise maximum, as ``vectors.max(axis=0)`` gives it in a quarter of the time."""
    features = np.unique(vectors.indices)
    peak = np.zeros(vectors.shape[1], dtype=vectors.dtype)
    np.maximum.at(peak, vectors.indices, vectors.data)
    return features, peak[features]


def _unit_rows(matrix: sparse.spmatrix) -> sparse.csr_matrix:
    """Rows scaled to unit length (a FeatureUnion of unit blocks is not unit)."""
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1))).ravel()
    norms[norms == 0] = 1.0
    return sparse.csr_matrix(sparse.diags(1.0 / norms) @ matrix)
