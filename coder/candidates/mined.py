"""Mined lexicon: phrases associated with codes in coded notes, found again in new notes.

No evidence spans are needed, only notes and the codes coders gave them. Every word n-gram of the
training notes (1 to ``max_tokens`` words inside one sentence, not starting or ending with a
stopword) is linked to the codes it co-occurs with at note level when either

* *statistical link*: at least ``min_support`` notes carry both and the association is positive
  and strong enough (signed Dunning log-likelihood ratio >= ``min_llr``), or
* *description link*: one note is enough, but at least ``min_overlap`` of the phrase's content
  words share their 5-letter prefix with a word of the code's description or inclusion terms
  (``describe``); this is how codes seen once or twice get phrases.

A link's score is the phrase's reliability for the code, as in ``coder.candidates.lexicon`` (of the training
notes with the phrase, the share that carried the code) with a description prior, and scaled down
when the phrase's words are not in the description:

    score = (support + smoothing * description_prior * coverage) / (present + smoothing)
            * (1 - overlap_weight * (1 - overlap))

``overlap``: share of the phrase's content words found in the description; ``coverage``: best share
of one description term's words found in the phrase. A note's code gets its best link score over its
matches. An occurrence with a negation cue in its clause (within ``negation_window`` words before it,
or an after-cue after it, no scope-ending word in between) is flagged and scores ``negated_weight``
times its link. Words are ``\\w+`` folded (``coder.candidates.words``), so only the word lists of
``language`` and the description overlap depend on the language (descriptions are English: ``descriptions=False`` for notes in another one).

Its dev figures alone are on the model card and in ``benchmarks/RESULTS.md`` (``python
benchmarks/accuracy.py``). Description links, the log-likelihood ratio (over PMI), the best link (over
a noisy-or of the links) and keeping negated matches (negation is a reranker feature: coders code some
negated findings) were chosen over their alternatives in development runs whose scripts are not in
the repository.
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from scipy import sparse
from scipy.special import xlogy

from coder.candidates.base import CandidateSource
from coder.candidates.mentions import expand_links, group_mentions, relative_position
from coder.candidates.words import CLAUSE_END, WORD, Tokens, fold, folded, leading_runs, word_stem
from coder.languages import language
from coder.estimator import read_state
from coder.io.atomic import write_atomically, write_text
from coder.rank import score_rank
from coder.schema import CM, CODE, EVIDENCE_COLUMNS, NOTE_ID, SYSTEM, TEXT

if TYPE_CHECKING:
    from coder.io.corpus import Corpus

# Words of ICD-10 descriptions (English) that say nothing about the condition.
_BOILERPLATE = frozenset("unspecified other specified nos elsewhere classified unknown not without".split())
# Description overlap compares word stems of this length ("abdominal" ~ "abdomen"). 5 also conflates
# "hypertension" and "hyperglycemia" (the term match uses 7), but the shipped model's mined lexicon
# was fitted with 5: changing it changes that model's outputs.
STEM = 5
Describe = Callable[[str, str], "str | Sequence[str]"]


def tokenize(text: str, *, plural_es: bool) -> tuple[Tokens, np.ndarray]:
    """The text's words (``Tokens``) and the clause (a sentence also ended by a comma or
    parenthesis) each word is in."""
    tokens = Tokens.of(text, plural_es=plural_es)
    cuts = [m.start() for m in CLAUSE_END.finditer(text)]
    return tokens, np.array([bisect.bisect_left(cuts, start) for start in tokens.starts], dtype=np.int64)


class MinedLexicon(CandidateSource):
    """Codes proposed by phrases that co-occurred with them in coded training notes.

    Parameters
    ----------
    name: the score column (``<name>``, ``<name>_*`` features) and the ``source`` label.
    text_column: the notes column that is read; evidence offsets point into it.
    language: the notes' language (``coder.languages.LANGUAGES``).
    descriptions: whether the ontology's (English) descriptions and inclusion terms make links and
        scale scores (off for notes in another language).
    max_tokens: longest phrase, in words (longer phrases did not score better on CodiEsp and fit slower).
    min_support: notes with both phrase and code needed for a statistical link.
    min_llr: signed log-likelihood ratio a statistical link needs.
    smoothing: pseudo-count added to a phrase's note count (see the module docstring).
    description_prior: reliability a phrase covering a whole description term is given before counting.
    min_overlap: overlap a description link needs; above 1 turns description links off.
    overlap_weight: a link whose phrase has no word of the description keeps ``1 - overlap_weight`` of its score.
    negation_window: words searched for a cue before (and after) an occurrence; 0 turns negation off.
    negated_weight: factor on a negated occurrence's score (1: negation is only flagged).
    count_negated: whether negated occurrences count as the phrase's presence when fitting.
    top_k: candidates kept per note and system (None: all).
    """

    learns_from_notes = True
    FEATURES = ("support", "present", "share", "overlap", "coverage", "mentions", "tokens", "negated", "position")

    def __init__(
        self,
        *,
        name: str = "mined",
        text_column: str = TEXT,
        language: str = "en",
        descriptions: bool = True,
        max_tokens: int = 2,
        min_support: int = 2,
        min_llr: float = 10.83,
        smoothing: float = 2.0,
        description_prior: float = 0.5,
        min_overlap: float = 0.5,
        overlap_weight: float = 0.25,
        negation_window: int = 5,
        negated_weight: float = 1.0,
        count_negated: bool = True,
        top_k: int | None = 200,
    ):
        self.name = name
        self.text_column = text_column
        self.language = language
        self.descriptions = descriptions
        self.max_tokens = max_tokens
        self.min_support = min_support
        self.min_llr = min_llr
        self.smoothing = smoothing
        self.description_prior = description_prior
        self.min_overlap = min_overlap
        self.overlap_weight = overlap_weight
        self.negation_window = negation_window
        self.negated_weight = negated_weight
        self.count_negated = count_negated
        self.top_k = top_k

    def _folded(self, words: tuple[str, ...] | frozenset[str]) -> frozenset[str]:
        return folded(tuple(words), plural_es=language(self.language).plural_es)

    # --- phrases of a text -----------------------------------------------------------------------

    def occurrences(self, text: str, *, within: frozenset[tuple[str, ...]] | None = None
                    ) -> Iterator[tuple[tuple[str, ...], int, int, bool]]:
        """(phrase words, start, end, negated) of every admissible n-gram of ``text``; ``within``: the
        phrases' ``leading_runs`` (a run that is none of them begins no phrase)."""
        tokens, clauses = tokenize(text, plural_es=language(self.language).plural_es)
        words, sentences = tokens.words, tokens.sentences
        stop = self._folded(language(self.language).stopwords)
        negated = self._negated(words, clauses)
        for i in range(len(words)):
            if words[i] in stop:
                continue
            for j in range(i, min(i + self.max_tokens, len(words))):
                if sentences[j] != sentences[i]:
                    break
                run = tuple(words[i : j + 1])
                if within is not None and run not in within:
                    break
                if words[j] not in stop:
                    yield run, tokens.starts[i], tokens.ends[j], bool(negated[i])

    def _negated(self, words: list[str], clauses: np.ndarray) -> np.ndarray:
        """[n_words] whether a negation cue reaches the word (see the module docstring)."""
        n, window = len(words), self.negation_window
        out = np.zeros(n, dtype=bool)
        if window <= 0:
            return out
        words_of = language(self.language)
        before, after, stop = (self._folded(words_of.negation_cues), self._folded(words_of.negation_after),
                               self._folded(words_of.negation_stop))
        scope = clauses + np.cumsum([word in stop for word in words])
        for j, word in enumerate(words):
            reach = ([np.arange(j + 1, min(j + 1 + window, n))] if word in before else []) + \
                    ([np.arange(max(0, j - window), j)] if word in after else [])
            for k in reach:
                out[k[scope[k] == scope[j]]] = True
        return out

    # --- fitting ---------------------------------------------------------------------------------

    def can_fit(self, corpus: Corpus) -> bool:
        return self.text_column in corpus.notes.columns and corpus.codes.height > 0

    def fit(self, corpus: Corpus, *, ontology: Any = None) -> MinedLexicon:
        """Learn links from the corpus's notes and gold codes; with ``descriptions``, the ontology's
        description and inclusion terms of each code make description links, the prior and the overlap."""
        describe = _describer(ontology) if self.descriptions and ontology is not None else None
        return self.fit_notes(corpus.notes, corpus.codes, describe=describe)

    def fit_notes(self, notes: pl.DataFrame, codes: pl.DataFrame, *, describe: Describe | None = None) -> MinedLexicon:
        """Learn links from ``notes`` (note_id, text column) and their gold ``codes`` (note_id, system,
        code). ``describe(system, code)``: the code's description terms (a string or several), for
        description links, prior and overlap; without it only statistical links are learnt."""
        vocabulary: dict[tuple[str, ...], int] = {}
        rows, cols = [], []
        note_ids = notes[NOTE_ID].to_list()
        for i, text in enumerate(notes[self.text_column].fill_null("").to_list()):
            found = {vocabulary.setdefault(p, len(vocabulary)) for p, _, _, negated in self.occurrences(text)
                     if self.count_negated or not negated}
            rows += [i] * len(found)
            cols += found
        x = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(note_ids), len(vocabulary)))
        phrases = list(vocabulary)
        self.labels_ = [tuple(r) for r in codes.select(SYSTEM, CODE).unique().sort(SYSTEM, CODE).iter_rows()]
        label_of = {label: j for j, label in enumerate(self.labels_)}
        row_of = {note_id: i for i, note_id in enumerate(note_ids)}
        gold = [(row_of[n], label_of[(s, c)]) for n, s, c in codes.select(NOTE_ID, SYSTEM, CODE).unique().iter_rows()
                if n in row_of]
        y = sparse.csr_matrix((np.ones(len(gold), dtype=np.float32), tuple(zip(*gold))),
                              shape=(len(note_ids), len(self.labels_)))
        present, carried = np.asarray(x.sum(axis=0)).ravel(), np.asarray(y.sum(axis=0)).ravel()
        together = (x.T @ y).tocsr()  # [n_phrases, n_labels] notes with both
        stop = self._folded(language(self.language).stopwords)
        stems = [frozenset(word_stem(w, STEM) for w in p if w not in stop) for p in phrases]
        terms = self._description_terms(describe)
        links = self._description_links(x, y, stems, terms)
        links |= self._statistical_links(together, present, carried, len(note_ids))
        p, c = (np.array(v, dtype=np.int64) for v in zip(*sorted(links))) if links else (np.zeros(0, np.int64),) * 2
        match = np.array([description_fit(stems[i], terms[self.labels_[j]]) if terms else (1.0, 0.0) for i, j in zip(p, c)])
        used = np.unique(p)  # only phrases that carry a link are kept, renumbered
        new_id = np.full(len(phrases), -1, dtype=np.int64)
        new_id[used] = np.arange(len(used))
        self.phrases_ = [phrases[i] for i in used]
        self.present_, self.carried_ = present[used].astype(np.int64), carried.astype(np.int64)
        self.link_phrase_, self.link_code_ = new_id[p], c
        self.link_support_ = np.asarray(together[p, c]).ravel().astype(np.int64) if len(p) else np.zeros(0, np.int64)
        self.link_overlap_, self.link_coverage_ = match.reshape(-1, 2).T
        self._index()
        return self

    def _statistical_links(self, together, present, carried, n_notes: int) -> set[tuple[int, int]]:
        """(phrase, label) pairs passing ``min_support`` and ``min_llr``."""
        k = together.tocoo()
        hit = k.data >= self.min_support
        p, c, n11 = k.row[hit], k.col[hit], k.data[hit].astype(np.float64)
        ok = signed_llr(n11, present[p], carried[c], n_notes) >= self.min_llr
        return set(zip(p[ok].tolist(), c[ok].tolist()))

    def _description_terms(self, describe: Describe | None) -> dict[tuple[str, str], list[frozenset[str]]]:
        """label -> word-prefix sets of its description terms (no stopwords, boilerplate or numbers)."""
        if describe is None:
            return {}
        stop = self._folded(language(self.language).stopwords) | _BOILERPLATE
        plural_es = language(self.language).plural_es
        out = {}
        for label in self.labels_:
            terms = describe(*label) or ()
            terms = [terms] if isinstance(terms, str) else terms
            stems = (frozenset(word_stem(w, STEM) for w in (fold(x, plural_es=plural_es) for x in WORD.findall(t))
                               if w not in stop and not w.isdigit()) for t in terms)
            out[label] = [s for s in stems if s]
        return out

    def _description_links(self, x, y, stems, terms) -> set[tuple[int, int]]:
        """(phrase, label) pairs found in one training note whose description overlap is enough."""
        if not terms or self.min_overlap > 1:
            return set()
        described = [frozenset().union(*terms[label]) for label in self.labels_]
        pairs = set()
        for i in range(x.shape[0]):
            by_stem = defaultdict(list)  # word prefix -> the note's phrases with it
            for p in x.indices[x.indptr[i] : x.indptr[i + 1]].tolist():
                for stem in stems[p]:
                    by_stem[stem].append(p)
            for j in y.indices[y.indptr[i] : y.indptr[i + 1]].tolist():
                pairs.update((p, j) for stem in described[j] for p in by_stem.get(stem, ()))
        return {(p, j) for p, j in pairs if description_fit(stems[p], terms[self.labels_[j]])[0] >= self.min_overlap}

    def _index(self) -> None:
        self.phrase_index_ = {p: i for i, p in enumerate(self.phrases_)}
        self.prefixes_ = leading_runs(self.phrases_)
        self.phrase_length_ = np.array([len(p) for p in self.phrases_], dtype=np.int64)
        self.link_ptr_ = np.searchsorted(self.link_phrase_, np.arange(len(self.phrases_) + 1))
        prior = self.smoothing * self.description_prior * self.link_coverage_
        reliability = (self.link_support_ + prior) / (self.present_[self.link_phrase_] + self.smoothing)
        self.link_score_ = reliability * (1.0 - self.overlap_weight * (1.0 - self.link_overlap_))

    # --- candidates ------------------------------------------------------------------------------

    def candidates(self, notes: pl.DataFrame) -> pl.DataFrame:
        """One row per (note, system, code) proposed, with its best occurrence's features and span.

        Columns (``<name>`` is ``mined`` by default): note_id, system, code, <name> (score),
        <name>_support (training notes with phrase and code), <name>_present (training notes with the
        phrase), <name>_share (support / the code's training notes), <name>_overlap, <name>_coverage
        (description fit), <name>_mentions (phrase occurrences proposing the code), <name>_tokens,
        <name>_negated (the best occurrence is negated), <name>_position (where it starts, as a share of
        the note's length), evidence_text/start/end (offsets into ``text_column``).
        """
        self.check_fitted()
        texts = [text or "" for text in notes[self.text_column].to_list()]
        note, phrase, start, end, negated = self._hits(texts)
        # every (occurrence, link of its phrase), in text order: note-major, then occurrence, then link
        occurrence, link = expand_links(self.link_ptr_, phrase)
        label, note = self.link_code_[link], note[occurrence]  # per link from here on
        score = self.link_score_[link] * np.where(negated[occurrence], self.negated_weight, 1.0)
        mentions = group_mentions(note, label, prefer=(score, ~negated[occurrence]))
        best = mentions.best
        label, hit, best_link = label[best], occurrence[best], link[best]
        support = self.link_support_[best_link]
        labels = [self.labels_[code] for code in label.tolist()]
        frame = pl.DataFrame({
            NOTE_ID: notes[NOTE_ID].gather(note[best]), SYSTEM: [system for system, _ in labels],
            CODE: [code for _, code in labels], self.name: score[best], f"{self.name}_support": support,
            f"{self.name}_present": self.present_[self.link_phrase_[best_link]],
            f"{self.name}_share": support / np.maximum(self.carried_[label], 1),
            f"{self.name}_overlap": self.link_overlap_[best_link], f"{self.name}_coverage": self.link_coverage_[best_link],
            f"{self.name}_mentions": mentions.count, f"{self.name}_tokens": self.phrase_length_[phrase[hit]],
            f"{self.name}_negated": negated[hit], f"{self.name}_position": relative_position(start[hit], note[best], texts),
            "evidence_text": [texts[n][a:b] for n, a, b in zip(note[best].tolist(), start[hit].tolist(), end[hit].tolist())],
            "evidence_start": start[hit], "evidence_end": end[hit],
        }, schema=self._schema())
        if self.top_k is None:
            return frame
        return frame.filter(score_rank(self.name) <= self.top_k)

    def _hits(self, texts: list[str]) -> tuple[np.ndarray, ...]:
        """(note, phrase, start, end, negated) of every occurrence of a known phrase in ``texts``, in text order."""
        columns: tuple[list, ...] = ([], [], [], [], [])
        for n, text in enumerate(texts):
            for words, start, end, negated in self.occurrences(text, within=self.prefixes_):
                phrase = self.phrase_index_.get(words)
                if phrase is not None:
                    for column, value in zip(columns, (n, phrase, start, end, negated)):
                        column.append(value)
        return (*(np.array(column, dtype=np.int64) for column in columns[:4]), np.array(columns[4], dtype=bool))

    def _schema(self) -> pl.Schema:
        name = self.name
        return pl.Schema({
            NOTE_ID: pl.String, SYSTEM: pl.String, CODE: pl.String, name: pl.Float64,
            f"{name}_support": pl.Int64, f"{name}_present": pl.Int64, f"{name}_share": pl.Float64,
            f"{name}_overlap": pl.Float64, f"{name}_coverage": pl.Float64, f"{name}_mentions": pl.Int64,
            f"{name}_tokens": pl.Int64, f"{name}_negated": pl.Boolean, f"{name}_position": pl.Float64, **EVIDENCE_COLUMNS,
        })

    # --- persistence -----------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write ``mined.json`` (parameters, phrases, labels) and ``mined.npz`` (counts and links)."""
        self.check_fitted()
        path.mkdir(parents=True, exist_ok=True)
        state = {"params": self.get_params(), "phrases": [" ".join(p) for p in self.phrases_], "labels": self.labels_}
        write_text(path / "mined.json", json.dumps(state, ensure_ascii=False), durable=False)
        arrays = {name: getattr(self, f"{name}_") for name in _ARRAYS}
        write_atomically(path / "mined.npz", lambda handle: np.savez_compressed(handle, **arrays), durable=False)

    @classmethod
    def load(cls, path: Path) -> MinedLexicon:
        state = read_state(path, "mined.json", what="mined lexicon", also=("mined.npz",))
        self = cls(**state["params"])
        with np.load(path / "mined.npz", allow_pickle=False) as arrays:
            for name in _ARRAYS:
                setattr(self, f"{name}_", arrays[name])
        self.phrases_ = [tuple(p.split(" ")) for p in state["phrases"]]
        self.labels_ = [tuple(label) for label in state["labels"]]
        self._index()
        return self


def description_fit(stems: frozenset[str], terms: list[frozenset[str]]) -> tuple[float, float]:
    """(overlap, coverage) of a phrase's content-word prefixes with a code's description terms:
    the share of the phrase found in the description, the best share of one term found in the phrase."""
    if not stems or not terms:
        return 0.0, 0.0
    return len(stems & frozenset().union(*terms)) / len(stems), max(len(stems & t) / len(t) for t in terms)


def signed_llr(n11: np.ndarray, n_phrase: np.ndarray, n_code: np.ndarray, n: int) -> np.ndarray:
    """Signed Dunning G2 of phrases and codes over ``n`` notes: negative when phrase and code
    co-occur less than chance."""
    n_phrase, n_code = n_phrase.astype(np.float64), n_code.astype(np.float64)
    expected = n_phrase * n_code / n
    observed = np.stack([n11, n_phrase - n11, n_code - n11, n - n_phrase - n_code + n11])
    margins = np.stack([n_phrase * n_code, n_phrase * (n - n_code), (n - n_phrase) * n_code, (n - n_phrase) * (n - n_code)])
    g2 = 2.0 * (xlogy(observed, observed) - xlogy(observed, margins / n)).sum(axis=0)
    return np.where(n11 > expected, g2, -g2)


_ARRAYS = ("present", "carried", "link_phrase", "link_code", "link_support", "link_overlap", "link_coverage")


def _describer(ontology: Any) -> Describe:
    """(system, code) -> the code's description and (CM) inclusion terms in ``ontology``."""
    def describe(system: str, code: str) -> list[str]:
        return [ontology.description(code, system), *(ontology.inclusion_terms(code) if system == CM else ())]

    return describe
