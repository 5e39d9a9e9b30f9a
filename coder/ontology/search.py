"""Ontology search: note sentences matched against code descriptions and inclusion terms.

The only candidate source for codes never seen in training. Descriptions are English, so the
search reads the English ``text`` column. Each sentence and each term become TF-IDF vectors
(word 1-2-grams plus character n-grams inside words, which catch inflections and compounds);
a code scores the best cosine between any of its terms and any sentence of the note.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import polars as pl
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion

from coder.errors import NotFittedError
from coder.estimator import ParamsMixin, read_state
from coder.ontology import Ontology
from coder.schema import CM, CODE, NOTE_ID, PCS, SYSTEM, TEXT

logger = logging.getLogger(__name__)

TERM = "term"
TERMS_SCHEMA = pl.Schema({SYSTEM: pl.String, CODE: pl.String, TERM: pl.String})
_SENTENCE = re.compile(r"[^\n.;]+")
PCS_PREFIX_LENGTH = 4  # CodiEsp often cuts PCS codes to their first 4 axes


def ontology_terms(ontology: Ontology, *, systems: Iterable[str] = (CM, PCS)) -> pl.DataFrame:
    """Every code's searchable terms (TERMS_SCHEMA): its description and CM inclusion terms;
    for PCS also the 4-axis prefixes that CodiEsp codes with."""
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


class OntologySearch(ParamsMixin):
    """Top codes per note and system by TF-IDF cosine between note sentences and code terms.

    Parameters
    ----------
    text_column: the notes column that is read (descriptions are English: ``text``).
    name: the score column written by ``candidates`` (the candidate source's name).
    top_k: candidates kept per (note, system).
    char_ngrams: character n-gram lengths inside words; None uses words only.
    """

    def __init__(self, *, text_column: str = TEXT, name: str = "ontology", top_k: int = 30,
                 char_ngrams: tuple[int, int] | None = (4, 5)):
        self.text_column = text_column
        self.name = name
        self.top_k = top_k
        self.char_ngrams = char_ngrams

    def _vectorizer(self) -> FeatureUnion | TfidfVectorizer:
        words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, strip_accents="unicode", stop_words="english")
        if self.char_ngrams is None:
            return words
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(self.char_ngrams), sublinear_tf=True,
                                strip_accents="unicode", min_df=2)
        return FeatureUnion([("words", words), ("chars", chars)])

    def fit(self, terms: pl.DataFrame) -> OntologySearch:
        """Index ``terms`` (TERMS_SCHEMA, e.g. from ``ontology_terms``)."""
        codes = terms.select(SYSTEM, CODE).unique(maintain_order=True).with_row_index("code_index")
        # terms grouped by code, so per-code maxima are one np.maximum.reduceat
        self.terms_ = terms.join(codes, on=[SYSTEM, CODE], how="left").sort("code_index", maintain_order=True)
        self.codes_ = codes.drop("code_index")
        self.code_starts_ = np.searchsorted(self.terms_["code_index"].to_numpy(), np.arange(codes.height))
        self.terms_ = self.terms_.select(SYSTEM, CODE, TERM)
        self.vectorizer_ = self._vectorizer().fit(self.terms_[TERM].to_list())
        # [n_features, n_terms], float32 CSR: a sentence-times-terms product is ~10x faster this way round
        self.term_matrix_ = _unit_rows(self.vectorizer_.transform(self.terms_[TERM].to_list())).T.tocsr().astype(np.float32)
        logger.info("ontology search: %d terms for %d codes", self.terms_.height, codes.height)
        return self

    def candidates(self, notes: pl.DataFrame) -> pl.DataFrame:
        """The ``top_k`` codes per (note, system): note_id, system, code, <name>, <name>_rank,
        evidence_text/start/end (the best sentence, offsets into ``text_column``)."""
        if not hasattr(self, "term_matrix_"):
            raise NotFittedError("OntologySearch is not fitted: call fit(terms) or OntologySearch.load(path)")
        codes = self.codes_[CODE].to_numpy()
        by_system = {system: np.flatnonzero(self.codes_[SYSTEM].to_numpy() == system)
                     for system in self.codes_[SYSTEM].unique(maintain_order=True)}
        frames = []
        for note_id, text in notes.select(NOTE_ID, self.text_column).iter_rows():
            spans = [(m.start(), m.end()) for m in _SENTENCE.finditer(text or "") if m.group().strip()]
            if not spans:
                continue
            sentences = _unit_rows(self.vectorizer_.transform([text[a:b] for a, b in spans])).astype(np.float32)
            sims = (sentences @ self.term_matrix_).toarray()  # [n_sentences, n_terms]
            per_code = np.maximum.reduceat(sims.max(axis=0), self.code_starts_)
            ends_of = np.append(self.code_starts_[1:], sims.shape[1])
            for system, idx in by_system.items():
                top = idx[np.argpartition(-per_code[idx], min(self.top_k, len(idx) - 1))[: self.top_k]]
                top = top[np.argsort(-per_code[top])]
                top = top[per_code[top] > 0]
                # the sentence where each top code's best term matched: its evidence
                sentence = [np.unravel_index(sims[:, self.code_starts_[c] : ends_of[c]].argmax(),
                                             (sims.shape[0], ends_of[c] - self.code_starts_[c]))[0] for c in top]
                starts = [spans[i][0] for i in sentence]
                ends = [spans[i][1] for i in sentence]
                frames.append(pl.DataFrame({
                    NOTE_ID: [note_id] * len(top), SYSTEM: [system] * len(top), CODE: codes[top].tolist(),
                    self.name: per_code[top], f"{self.name}_rank": np.arange(1, len(top) + 1),
                    "evidence_text": [text[a:b] for a, b in zip(starts, ends)], "evidence_start": starts, "evidence_end": ends,
                }, schema=self._schema()))
        return pl.concat(frames) if frames else pl.DataFrame(schema=self._schema())

    def _schema(self) -> pl.Schema:
        return pl.Schema({NOTE_ID: pl.String, SYSTEM: pl.String, CODE: pl.String, self.name: pl.Float64,
                          f"{self.name}_rank": pl.Int32, "evidence_text": pl.String,
                          "evidence_start": pl.Int32, "evidence_end": pl.Int32})

    def save(self, path: Path) -> None:
        """Write the parameters and indexed terms (``terms.parquet``); ``load`` re-indexes them."""
        path.mkdir(parents=True, exist_ok=True)
        self.terms_.write_parquet(path / "terms.parquet")
        (path / "search.json").write_text(json.dumps(self.get_params()))

    @classmethod
    def load(cls, path: Path) -> OntologySearch:
        params = read_state(path, "search.json", what="ontology search", also=("terms.parquet",))
        if params["char_ngrams"] is not None:
            params["char_ngrams"] = tuple(params["char_ngrams"])
        return cls(**params).fit(pl.read_parquet(path / "terms.parquet"))


def _unit_rows(matrix: sparse.spmatrix) -> sparse.csr_matrix:
    """Rows scaled to unit length (a FeatureUnion of unit blocks is not unit)."""
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1))).ravel()
    norms[norms == 0] = 1.0
    return sparse.csr_matrix(sparse.diags(1.0 / norms) @ matrix)
