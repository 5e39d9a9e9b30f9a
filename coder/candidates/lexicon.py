"""Evidence-span lexicon: phrases that coders marked as evidence, matched again in new notes.

CodiEsp-X gives, for every gold code, the span of the Spanish note that justifies it. Each span
becomes a phrase; a phrase found in a new note proposes the codes it carried in training, scored
by its *reliability*: of the training notes where the phrase occurs, the share that carried the
code (smoothed). Matching works on normalised tokens (lower case, accents folded, a light plural
strip, punctuation ignored), so it respects word boundaries, and a phrase whose words appear in
one sentence in any order (discontinuous spans, reordered words) matches as a weaker "set" match
with its own reliability. Spans exist only in Spanish, so the lexicon reads ``text_es`` and is skipped for
dumps that lack that column.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from coder.estimator import read_state
from coder.candidates.base import CandidateSource
from coder.candidates.mentions import expand_links, group_mentions, relative_position
from coder.candidates.words import Tokens, folded, leading_runs
from coder.languages import language
from coder.io.atomic import write_text
from coder.schema import CODE, EVIDENCE_COLUMNS, NOTE_ID, SPAN_TEXT, SYSTEM, TEXT_ES

if TYPE_CHECKING:
    from coder.io.corpus import Corpus

logger = logging.getLogger(__name__)

EXACT, TOKEN_SET = "exact", "set"


@dataclass(frozen=True)
class Match:
    """One phrase found in a note: ``key`` indexes ``EvidenceLexicon.keys_``; offsets into the text."""

    key: int
    start: int
    end: int
    negated: bool


class EvidenceLexicon(CandidateSource):
    """Codes proposed by training evidence phrases found in a note's Spanish text.

    Parameters
    ----------
    name: the score column (``<name>``, ``<name>_*`` features) and the ``source`` label.
    text_column: the notes column that is read; evidence offsets point into it.
    language: the notes' language (``coder.languages.LANGUAGES``): stopwords, negation cues, plural rule.
    max_tokens: longest phrase (in words) that is matched contiguously.
    smoothing: pseudo-count added to a phrase's occurrences: reliability = carried / (present + smoothing).
    negation_window: a negation cue this many words before a match, in its sentence, marks it negated.
    """

    learns_from_notes = True
    FEATURES = ("noisy_or", "support", "present", "share", "mentions", "tokens", "set", "negated", "position")

    def __init__(
        self,
        *,
        name: str = "lexicon",
        text_column: str = TEXT_ES,
        language: str = "es",
        max_tokens: int = 10,
        smoothing: float = 1.0,
        negation_window: int = 5,
    ):
        self.name = name
        self.text_column = text_column
        self.language = language
        self.max_tokens = max_tokens
        self.smoothing = smoothing
        self.negation_window = negation_window

    # --- fitting -------------------------------------------------------------------------------

    def can_fit(self, corpus: Corpus) -> bool:
        """Fitting needs evidence spans into ``text_column`` (coders' spans, or spans projected there)."""
        return self.text_column in corpus.notes.columns and corpus.spans(self.text_column).height > 0

    def fit(self, corpus: Corpus, *, ontology: Any = None) -> EvidenceLexicon:
        """Learn phrases from the corpus's evidence (SPAN_SCHEMA) and their reliability on its notes.

        The gold codes of a note are the codes of its evidence rows (CodiEsp-X gives a span for
        every gold code).
        """
        notes, evidence = corpus.notes, corpus.spans(self.text_column)
        phrase_codes: dict[tuple[str, ...], Counter] = defaultdict(Counter)
        for system, code, span in evidence.select(SYSTEM, CODE, SPAN_TEXT).iter_rows():
            words = tuple(self._tokens(span or "").words)
            if 0 < len(words) <= self.max_tokens:
                phrase_codes[words][(system, code)] += 1
        keys: list[tuple[str, tuple[str, ...]]] = []
        codes: list[list[tuple[str, str]]] = []
        for words, counter in phrase_codes.items():
            for kind, key_words in ((EXACT, words), (TOKEN_SET, self._content_set(words))):
                if kind == TOKEN_SET and len(key_words) < 2:
                    continue
                keys.append((kind, key_words))
                codes.append(sorted(counter))
        self._index(keys)
        gold: dict[str, set[tuple[str, str]]] = defaultdict(set)
        for note_id, system, code in evidence.select(NOTE_ID, SYSTEM, CODE).iter_rows():
            gold[note_id].add((system, code))
        present = np.zeros(len(keys), dtype=np.int64)
        carried = [np.zeros(len(c), dtype=np.int64) for c in codes]
        self.keys_, self.key_codes_ = keys, codes
        for note_id, text in notes.select(NOTE_ID, self.text_column).iter_rows():
            for key in {m.key for m in self.matches(text or "")}:
                present[key] += 1
                carried[key] += np.array([c in gold[note_id] for c in codes[key]], dtype=np.int64)
        self.present_ = present
        self.carried_ = carried
        self._links()
        logger.info("lexicon: %d phrases (%d keys) from %d evidence rows", len(phrase_codes), len(keys), evidence.height)
        return self

    def _index(self, keys: list[tuple[str, tuple[str, ...]]]) -> None:
        """Lookup tables: exact phrases by their words and their leading words, token sets by their longest
        word, known words."""
        self.known_words_ = frozenset(w for _, words in keys for w in words)
        self.exact_index_: dict[tuple[str, ...], int] = {}
        # a token set's key, words and their set (``_set_matches`` tests the set at C speed)
        self.set_index_: dict[str, list[tuple[int, tuple[str, ...], frozenset[str]]]] = defaultdict(list)
        self.prefixes_ = leading_runs(words for kind, words in keys if kind == EXACT)
        for i, (kind, words) in enumerate(keys):
            if kind == EXACT:
                self.exact_index_[words] = i
            else:
                self.set_index_[max(words, key=len)].append((i, words, frozenset(words)))

    # --- matching ------------------------------------------------------------------------------

    def matches(self, text: str) -> Iterator[Match]:
        """Every phrase occurrence in ``text``: contiguous phrases, then same-sentence token sets."""
        tokens = self._tokens(text)
        words = list(tokens.words)
        negated = self._negated(words, tokens.sentences)
        n = len(words)
        for i in range(n):
            for length in range(1, min(self.max_tokens, n - i) + 1):
                run = tuple(words[i : i + length])
                if run not in self.prefixes_:
                    break
                key = self.exact_index_.get(run)
                if key is not None:
                    yield Match(key, tokens.starts[i], tokens.ends[i + length - 1], negated[i])
        yield from self._set_matches(tokens, words, negated)

    def _tokens(self, text: str) -> Tokens:
        return Tokens.of(text, plural_es=language(self.language).plural_es)

    def _negated(self, words: list[str], sentences: Sequence[int]) -> list[bool]:
        """Per word: whether a negation cue precedes it within ``negation_window`` words of its sentence."""
        words_of = language(self.language)
        cues = folded(words_of.negation_cues, plural_es=words_of.plural_es)
        out, last = [], -1  # the last cue so far; an earlier one is farther and in the same or an earlier sentence
        for i, word in enumerate(words):
            out.append(last >= 0 and i - last <= self.negation_window and sentences[last] == sentences[i])
            if word in cues:
                last = i
        return out

    def _content_set(self, words: tuple[str, ...]) -> tuple[str, ...]:
        """The distinct content words of a phrase, sorted: the key of an any-order match."""
        stopwords = language(self.language).stopwords
        return tuple(sorted({w for w in words if w not in stopwords and len(w) > 2}))

    def _set_matches(self, tokens: Tokens, words: list[str], negated: list[bool]) -> Iterator[Match]:
        by_sentence: dict[int, dict[str, int]] = defaultdict(dict)
        for i, (word, sentence) in enumerate(zip(words, tokens.sentences)):
            by_sentence[sentence].setdefault(word, i)
        for first in by_sentence.values():
            seen: set[int] = set()
            held = first.keys()
            for word in first:
                for key, key_words, needed in self.set_index_.get(word, ()):
                    if key in seen or not held >= needed:
                        continue
                    seen.add(key)
                    positions = [first[w] for w in key_words]
                    lo, hi = min(positions), max(positions)
                    yield Match(key, tokens.starts[lo], tokens.ends[hi], negated[lo])

    def _links(self) -> None:
        """Flat tables of every (key, code) link, in key order: the code (an index into ``labels_``),
        its reliability (the share of training notes with the phrase that carried the code,
        smoothed), the notes that carried it and its share of the key's carried codes."""
        self.labels_ = list(dict.fromkeys(sc for codes in self.key_codes_ for sc in codes))
        index = {sc: i for i, sc in enumerate(self.labels_)}
        self.link_ptr_ = np.cumsum([0, *(len(codes) for codes in self.key_codes_)])
        self.link_label_ = np.array([index[sc] for codes in self.key_codes_ for sc in codes], dtype=np.int64)
        self.link_carried_ = np.concatenate([np.zeros(0, dtype=np.int64), *self.carried_])
        present = np.repeat(self.present_, np.diff(self.link_ptr_))
        self.link_reliability_ = self.link_carried_ / (present + self.smoothing)
        totals = np.repeat([max(int(c.sum()), 1) for c in self.carried_], np.diff(self.link_ptr_)).astype(np.int64)
        self.link_share_ = self.link_carried_ / totals
        self.key_tokens_ = np.array([len(words) for _, words in self.keys_], dtype=np.int64)
        self.key_is_set_ = np.array([kind == TOKEN_SET for kind, _ in self.keys_], dtype=bool)

    # --- candidates ----------------------------------------------------------------------------

    def candidates(self, notes: pl.DataFrame) -> pl.DataFrame:
        """One row per (note, system, code) proposed, with match features and the best evidence span.

        Columns (``<name>`` is ``lexicon`` by default): note_id, system, code, <name> (best
        reliability), <name>_noisy_or, <name>_support (training notes where the best phrase carried
        the code), <name>_present (training notes with the phrase), <name>_share (the code's share of
        the phrase's codes), <name>_mentions, <name>_tokens, <name>_set, <name>_negated,
        <name>_position (where the best span starts, as a share of the note's length),
        evidence_text/start/end (offsets into ``text_column``).
        """
        self.check_fitted()
        texts = [text or "" for text in notes[self.text_column].to_list()]
        found = [(n, m) for n, text in enumerate(texts) for m in self.matches(text)]
        note = np.array([n for n, _ in found], dtype=np.int64)
        match = [m for _, m in found]
        key = np.array([m.key for m in match], dtype=np.int64)
        # every (match, code of its key), in text order
        mention, link = expand_links(self.link_ptr_, key)
        reliability, carried = self.link_reliability_[link], self.link_carried_[link]
        mentions = group_mentions(note[mention], self.link_label_[link], prefer=(reliability, carried))
        best = mentions.best
        hit, best_link = mention[best], link[best]
        labels = [self.labels_[label] for label in self.link_label_[best_link].tolist()]
        matched = [match[i] for i in hit.tolist()]
        start = np.array([m.start for m in matched], dtype=np.int64)
        end = np.array([m.end for m in matched], dtype=np.int64)
        name = self.name
        return pl.DataFrame({
            NOTE_ID: notes[NOTE_ID].gather(note[hit]), SYSTEM: [system for system, _ in labels],
            CODE: [code for _, code in labels], name: reliability[best], f"{name}_noisy_or": mentions.noisy_or(reliability),
            f"{name}_support": carried[best], f"{name}_present": self.present_[key[hit]],
            f"{name}_share": self.link_share_[best_link], f"{name}_mentions": mentions.count,
            f"{name}_tokens": self.key_tokens_[key[hit]], f"{name}_set": self.key_is_set_[key[hit]],
            f"{name}_negated": [m.negated for m in matched],
            f"{name}_position": relative_position(start, note[hit], texts),
            "evidence_text": [texts[n][m.start : m.end] for n, m in zip(note[hit].tolist(), matched)],
            "evidence_start": start, "evidence_end": end,
        }, schema=self._schema())

    def _schema(self) -> pl.Schema:
        name = self.name
        return pl.Schema({
            NOTE_ID: pl.String, SYSTEM: pl.String, CODE: pl.String,
            name: pl.Float64, f"{name}_noisy_or": pl.Float64, f"{name}_support": pl.Int64,
            f"{name}_present": pl.Int64, f"{name}_share": pl.Float64, f"{name}_mentions": pl.Int64,
            f"{name}_tokens": pl.Int64, f"{name}_set": pl.Boolean,
            f"{name}_negated": pl.Boolean, f"{name}_position": pl.Float64, **EVIDENCE_COLUMNS,
        })

    # --- persistence ---------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write ``lexicon.json`` (parameters and learned tables) into the folder ``path``."""
        self.check_fitted()
        path.mkdir(parents=True, exist_ok=True)
        state = {
            "params": self.get_params(),
            "keys": [[kind, list(words)] for kind, words in self.keys_],
            "codes": [[list(sc) for sc in codes] for codes in self.key_codes_],
            "present": self.present_.tolist(),
            "carried": [c.tolist() for c in self.carried_],
        }
        write_text(path / "lexicon.json", json.dumps(state, ensure_ascii=False), durable=False)

    @classmethod
    def load(cls, path: Path) -> EvidenceLexicon:
        state = read_state(path, "lexicon.json", what="lexicon")
        self = cls(**state["params"])
        keys = [(kind, tuple(words)) for kind, words in state["keys"]]
        self._index(keys)
        self.keys_ = keys
        self.key_codes_ = [[tuple(sc) for sc in codes] for codes in state["codes"]]
        self.present_ = np.asarray(state["present"], dtype=np.int64)
        self.carried_ = [np.asarray(c, dtype=np.int64) for c in state["carried"]]
        self._links()
        return self
