"""Term match: ontology terms whose words a note's sentence holds, scored by how specific they are.

The coverage search (``coder.candidates.ontology_search``) scores the share of a term's weight
that a sentence holds: "Pain, unspecified" and "Abscess of prostate" both score about 1 when
found, and a code never seen in training, named in the note by its description, ranks among
codes matched by one common word. This source scores what was matched by its specificity: each
term's content words (stopwords and the ontology's filler words left out, a word's first
``stem_length`` letters standing for it) are looked up in each sentence of the note; a code takes
its term with the largest share of its words in one sentence (then the largest matched weight),
and reports the summed idf of the words found there (``<name>``, idf over the training notes'
text) and of those missing (``<name>_missing``). It proposes the ``top_k`` codes per note whose
term a sentence holds whole, by matched idf, and backfills every other source's candidates
(``coder.candidates.backfill``), which is where it helps the reranker: codes of one description
found in the note rank above codes matched by a common word (benchmarks/accuracy.py, dev MAP).
Diagnoses only by default: procedure descriptions are built of axis values, not of the words a note uses.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from scipy import sparse

from coder.candidates.base import CandidateSource
from coder.candidates.mentions import expand_links
from coder.candidates.ontology_search import TERM, ontology_terms, stored_terms, terms_digest
from coder.candidates.words import WORD, Tokens, fold, word_stem
from coder.estimator import read_state
from coder.io.atomic import write_text
from coder.ontology import Ontology
from coder.rank import score_rank
from coder.schema import CM, CODE, NOTE_ID, SYSTEM, TEXT

if TYPE_CHECKING:
    from coder.io.corpus import Corpus

logger = logging.getLogger(__name__)

# Words that name no finding: English function words and the ontology's filler words.
FILLER = frozenset(
    "unspecified other of the and with without nos site type due to in or by on for at as not elsewhere classified "
    "specified part parts region".split())
STATE_FILE = "term_match.json"
# idf is kept above 0 so that the products counting a term's words and summing their idf have the same nonzeros.
IDF_FLOOR = 1e-6
# Notes matched at once: the sentences of a CodiEsp note share a word with ~120k terms ("left", "fracture").
NOTES_AT_ONCE = 16


def content_stems(words: tuple[str, ...] | list[str], stem_length: int) -> list[str]:
    """The stems (first ``stem_length`` letters) of ``words`` that name something: filler words and
    single letters left out, single digits kept."""
    return [word_stem(word, stem_length) for word in words if word not in FILLER and (len(word) > 1 or word.isdigit())]


@dataclass(frozen=True)
class TermStems:
    """What the term match knows of a list of terms before it reads any note; shared by every fit of
    the same terms, so its arrays are read-only."""

    kept: np.ndarray
    """[n_terms] bool: the term has a content stem (the others are left out)."""
    vocabulary: Mapping[str, int]
    """Stem -> its row in ``stem_terms``."""
    stem_terms: sparse.csr_matrix
    """[n_stems, n_kept_terms]: 1 where a term holds a stem."""
    anchor_terms: sparse.csr_matrix
    """[n_stems, n_kept_terms]: 1 at each term's rarest stem (the fewest terms hold it): a sentence can hold
    a term whole only if it holds that stem."""


@functools.lru_cache(maxsize=4)
def term_stems(texts: tuple[str, ...], stem_length: int) -> TermStems:
    """The content stems of the terms ``texts``, once per process for the same texts and stem length:
    ``coder train`` fits the term match on every fold over the same ontology terms."""
    stems = [list(dict.fromkeys(content_stems([fold(m.group(), plural_es=False) for m in WORD.finditer(term)],
                                              stem_length))) for term in texts]
    kept = np.array([bool(s) for s in stems], dtype=bool)
    stems = [s for s in stems if s]
    vocabulary = {stem: i for i, stem in enumerate(dict.fromkeys(s for term in stems for s in term))}
    rows = np.array([vocabulary[s] for term in stems for s in term], dtype=np.int64)
    columns = np.repeat(np.arange(len(stems)), [len(term) for term in stems])
    matrix = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, columns)),
                               shape=(len(vocabulary), len(stems)))
    by_term = matrix.T.tocsr()
    term = np.repeat(np.arange(len(stems)), np.diff(by_term.indptr))
    rarest = np.lexsort((by_term.indices, np.diff(matrix.indptr)[by_term.indices], term))[by_term.indptr[:-1]]
    anchor = sparse.csr_matrix((np.ones(len(stems), dtype=np.float32), (by_term.indices[rarest], np.arange(len(stems)))),
                               shape=matrix.shape)
    for array in (kept, matrix.data, matrix.indices, matrix.indptr, anchor.data, anchor.indices, anchor.indptr):
        array.flags.writeable = False
    return TermStems(kept, MappingProxyType(vocabulary), matrix, anchor)


class TermMatch(CandidateSource):
    """Codes whose ontology term a sentence of the note holds, scored by the matched words' idf.

    Parameters
    ----------
    name: the score column (``<name>``, ``<name>_missing``, ``<name>_all``) and the ``source`` label.
    text_column: the notes column that is read (the ontology's terms are English: ``text``).
    systems: the ICD systems whose terms are matched.
    top_k: codes proposed per note (terms held whole by a sentence, by matched idf).
    stem_length: the letters of a folded word that stand for it ("prostatic" and "prostate" match; 7
        keeps "hypertension" and "hyperglycemia" apart, which 5 conflated).
    backfill: also score the codes the other sources propose (``score``, ``coder.candidates.backfill``).
    """

    learns_from_notes = True  # the idf of words over the training notes' text (no codes read)
    reads_terms = True
    FEATURES = ("missing",)

    def __init__(self, *, name: str = "term_match", text_column: str = TEXT, systems: tuple[str, ...] = (CM,),
                 top_k: int = 30, stem_length: int = 7, backfill: bool = True):
        self.name = name
        self.text_column = text_column
        self.systems = systems
        self.top_k = top_k
        self.stem_length = stem_length
        self.backfill = backfill

    def fit(self, corpus: Corpus, *, ontology: Ontology) -> TermMatch:
        """Take the terms of ``systems`` from ``ontology`` and each stem's idf over ``corpus``'s notes."""
        texts = [text or "" for text in corpus.notes[self.text_column].to_list()]
        frequency: dict[str, int] = {}
        for text in texts:
            for stem in set(content_stems(Tokens.of(text, plural_es=False).words, self.stem_length)):
                frequency[stem] = frequency.get(stem, 0) + 1
        self.document_frequency_, self.n_notes_ = frequency, len(texts)
        self._index(ontology_terms(ontology, systems=self.systems))
        self.document_frequency_ = {stem: n for stem, n in sorted(frequency.items()) if stem in self.vocabulary_}
        logger.info("term match: %d terms of %d codes, idf over %d notes", self.term_code_.size, self.codes_.height,
                    self.n_notes_)
        return self

    def _index(self, terms: pl.DataFrame) -> None:
        """The terms' content stems as a matrix [n_stems, n_terms] (1 where a term holds a stem) and the stems' idf."""
        self.terms_ = terms
        stems = term_stems(tuple(terms[TERM].to_list()), self.stem_length)
        self.vocabulary_, self.stem_terms_, self.anchor_terms_ = stems.vocabulary, stems.stem_terms, stems.anchor_terms
        codes = terms.filter(pl.Series(stems.kept)).select(SYSTEM, CODE)
        self.codes_ = codes.unique(maintain_order=True)
        self.term_code_ = codes.join(self.codes_.with_row_index("_code"), on=[SYSTEM, CODE], how="left")["_code"].to_numpy()
        # each code's terms: code_terms_[code_term_starts_[c] : code_term_starts_[c + 1]], ascending
        self.code_terms_ = np.argsort(self.term_code_, kind="stable")
        self.code_term_starts_ = np.searchsorted(self.term_code_[self.code_terms_], np.arange(self.codes_.height + 1))
        n = self.n_notes_
        self.idf_ = np.log((n + 1) / (np.array([self.document_frequency_.get(s, 0) for s in self.vocabulary_],
                                               dtype=np.float64) + 1)).astype(np.float32)
        self.idf_terms_ = self.stem_terms_.copy()  # the same layout, each stem's row holding its idf
        self.idf_terms_.data = np.repeat(np.maximum(self.idf_, IDF_FLOOR), np.diff(self.stem_terms_.indptr))
        self.term_words_ = np.asarray(self.stem_terms_.sum(axis=0), dtype=np.float64).ravel()
        self.term_idf_ = np.asarray(self.idf_terms_.sum(axis=0), dtype=np.float64).ravel()

    def _best(self, notes: pl.DataFrame, *, keys: pl.DataFrame | None = None) -> pl.DataFrame:
        """Per (note, code) with a word of one of its terms in the note: note_id, system, code, the best
        term's matched idf (``<name>``) and missing idf (``<name>_missing``). The best term: the largest
        share of its words in one sentence, then the most idf. Without ``keys``, only codes whose term a
        sentence holds whole; with them, only those (note_id, system, code)."""
        self.check_fitted()
        wanted = None
        if keys is not None:  # (note's index in the batch, code's index) of the pairs to keep
            known = keys.join(self.codes_.with_row_index("_code"), on=[SYSTEM, CODE])
            index = dict(zip(notes[NOTE_ID].to_list(), range(notes.height)))
            wanted = (known[NOTE_ID].replace_strict(index, return_dtype=pl.Int64).to_numpy(),
                      known["_code"].to_numpy().astype(np.int64))
        parts = [self._best_of(notes.slice(start, NOTES_AT_ONCE), start, wanted) for start in range(0, notes.height, NOTES_AT_ONCE)]
        note, code, matched, missing = (np.concatenate(arrays) for arrays in zip(*parts)) if parts else ([],) * 4
        return self.codes_[np.asarray(code, dtype=np.int64)].with_columns(
            pl.Series(NOTE_ID, notes[NOTE_ID].gather(np.asarray(note, dtype=np.int64)), dtype=pl.String),
            pl.Series(self.name, matched, dtype=pl.Float64),
            pl.Series(f"{self.name}_missing", missing, dtype=pl.Float64)).select(NOTE_ID, SYSTEM, CODE, self.name,
                                                                                f"{self.name}_missing")

    def _best_of(self, notes: pl.DataFrame, offset: int, wanted: tuple[np.ndarray, np.ndarray] | None
                 ) -> tuple[np.ndarray, ...]:
        """``_best`` of a few notes (their index in the batch starts at ``offset``): arrays note, code,
        matched, missing. ``wanted``: the (note, code) index pairs to keep (None: whole terms)."""
        rows, columns, owners = [], [], []
        for note, text in enumerate(notes[self.text_column].to_list(), start=offset):
            tokens = Tokens.of(text or "", plural_es=False)
            stem_of = {word: self.vocabulary_.get(stem) for word in set(tokens.words)
                       for stem in content_stems([word], self.stem_length)}  # each distinct word once
            found = {(sentence, stem) for word, sentence in zip(tokens.words, tokens.sentences)
                     if (stem := stem_of.get(word)) is not None}
            at = {sentence: len(owners) + i for i, sentence in enumerate(sorted({sentence for sentence, _ in found}))}
            rows += [at[sentence] for sentence, _ in found]
            columns += [stem for _, stem in found]
            owners += [note] * len(at)
        held = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, columns)), shape=(len(owners), len(self.vocabulary_)))
        # Only the terms that can be kept below: held whole (their rarest stem is in a sentence), or of a
        # wanted code. A sentence shares a word with ~120k terms; each pair's values are the same in
        # the product of the terms' columns alone (a row's sum runs over its own stems).
        if wanted is None:
            terms = np.unique((held @ self.anchor_terms_).indices)
        else:  # a [notes, codes] mask of these notes: a lookup per pair
            mask = np.zeros((notes.height, self.codes_.height), dtype=bool)
            inside = (wanted[0] >= offset) & (wanted[0] < offset + notes.height)
            mask[wanted[0][inside] - offset, wanted[1][inside]] = True
            _, links = expand_links(self.code_term_starts_, np.unique(wanted[1][inside]))
            terms = np.sort(self.code_terms_[links])
        # [sentences, terms]: how many of a term's words a sentence holds, and their idf. The two term
        # matrices share their nonzeros (idf > 0), so the products list the same pairs in the same order.
        words, weight = held @ self.stem_terms_[:, terms], held @ self.idf_terms_[:, terms]
        assert np.array_equal(words.indptr, weight.indptr) and np.array_equal(words.indices, weight.indices)
        sentence = np.repeat(np.arange(len(owners)), np.diff(words.indptr))
        term = terms[words.indices]
        share = words.data / self.term_words_[term]
        note, code = np.asarray(owners, dtype=np.int64)[sentence], self.term_code_[term]
        keep = share >= 1.0 if wanted is None else mask[note - offset, code]
        term, share, note, code, matched = term[keep], share[keep], note[keep], code[keep], weight.data[keep].astype(np.float64)
        missing = np.maximum(self.term_idf_[term] - matched, 0.0)
        order = np.lexsort((missing, -matched, -share, code, note))
        changed = (np.diff(note[order]) != 0) | (np.diff(code[order]) != 0)
        first = order[np.flatnonzero(np.r_[len(order) > 0, changed])]
        return note[first], code[first], matched[first], missing[first]

    def candidates(self, notes: pl.DataFrame) -> pl.DataFrame:
        """The ``top_k`` codes per note whose term a sentence holds whole, by matched idf: note_id,
        system, code, <name>, <name>_missing (0), <name>_rank."""
        best = self._best(notes)
        return best.with_columns(score_rank(self.name).alias(f"{self.name}_rank")).filter(pl.col(f"{self.name}_rank") <= self.top_k).sort(
            NOTE_ID, SYSTEM, f"{self.name}_rank")

    def score(self, notes: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
        """<name> and <name>_missing of each (note_id, system, code) of ``keys`` whose note holds a word
        of one of the code's terms (the others read 0 once features are filled)."""
        notes = notes.join(keys.select(NOTE_ID).unique(), on=NOTE_ID, how="semi")
        return self._best(notes, keys=keys.join(notes.select(NOTE_ID), on=NOTE_ID, how="semi"))

    # --- persistence ---------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the parameters, stem frequencies and the terms' digest (``term_match.json``)."""
        self.check_fitted()
        path.mkdir(parents=True, exist_ok=True)
        state = {"params": self.get_params(), "n_notes": self.n_notes_, "document_frequency": self.document_frequency_,
                 "terms_sha256": terms_digest(self.terms_)}
        write_text(path / STATE_FILE, json.dumps(state, ensure_ascii=False), durable=False)

    @classmethod
    def load(cls, path: Path, *, terms: pl.DataFrame | None = None) -> TermMatch:
        """The saved term match over its systems' rows of ``terms``."""
        state = read_state(path, STATE_FILE, what="term match")
        params = state["params"]
        self = cls(**{**params, "systems": tuple(params["systems"])})
        self.n_notes_, self.document_frequency_ = state["n_notes"], state["document_frequency"]
        self._index(stored_terms(terms, state["terms_sha256"], systems=self.systems, what=f"term match {path}"))
        return self
