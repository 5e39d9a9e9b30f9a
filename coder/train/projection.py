"""Evidence spans projected from one language onto the other, learned from parallel notes alone.

CodiEsp's evidence spans point into the Spanish ``text_es``; an English-only dump has just ``text``
(a machine translation, one sentence a line). Projecting the spans onto ``text`` gives English
text its own evidence lexicon (``EvidenceLexicon(text_column="text", language="en")``) and English
evidence offsets. Projection is learned from parallel notes only (no labels: fitting it on every
training note and unlabelled note leaks nothing into out-of-fold stacking):

1. ``translation_segments`` (``coder.candidates.words``): Spanish sentences (paragraphs cut after
   ``. `` before a capital) and English lines.
2. ``SentenceAligner``: Gale-Church dynamic programme on character lengths (beads 1-1, 1-2, 2-1,
   2-2, 1-3, 3-1, 1-0, 0-1) pairs Spanish sentences with English lines.
3. ``WordAligner``: IBM Model 1 with a fixed fast_align-style diagonal prior, trained by EM over the
   aligned sentence pairs in both directions (vectorised over word-pair ids); Viterbi links of both
   directions symmetrised (intersection, grow-diag(-final), union).
4. ``project_spans``: each piece of a Spanish span becomes the hull of the English words linked to
   its words (intersection links, else grow-diag-final), inside one English line, cut at gaps,
   function words trimmed; implausibly long hulls are dropped.

The projected frame is in ``SPAN_SCHEMA``, as coders' spans are: its span text is English and its
offsets point into ``text``; the projected lexicon's dev figures are on the model card and in
``benchmarks/RESULTS.md`` (``python benchmarks/accuracy.py``). The symmetrisation, gap and trimming choices were made in development runs whose scripts are not in the repository.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from scipy.special import log_ndtr

from coder.candidates.words import WORD, fold, translation_segments
from coder.languages import LANGUAGES
from coder.estimator import ParamsMixin
from coder.schema import CODE, NOTE_ID, SPAN_OFFSETS, SPAN_SCHEMA, SPAN_TEXT, SYSTEM, TEXT, TEXT_ES

# Gale & Church (1993) bead priors, with 1-3 / 3-1 added for lines the translator split twice.
BEADS = {(1, 1): 0.89, (1, 2): 0.0445, (2, 1): 0.0445, (2, 2): 0.011, (1, 3): 0.005, (3, 1): 0.005,
         (1, 0): 0.005, (0, 1): 0.005}




@dataclass
class Words:
    """Folded words of a text with character offsets and the segment each is in."""

    words: list[str] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    segment: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, text: str, spans: Sequence[tuple[int, int]]) -> Words:
        out = cls()
        for k, (lo, hi) in enumerate(spans):
            for m in WORD.finditer(text, lo, hi):
                out.words.append(fold(m.group()))
                out.starts.append(m.start())
                out.ends.append(m.end())
                out.segment.append(k)
        return out


class SentenceAligner:
    """Gale-Church sentence alignment on character lengths (bead priors: ``BEADS``)."""

    def fit(self, notes: pl.DataFrame) -> SentenceAligner:
        """English characters per Spanish character (``ratio_``) and the variance of the length
        difference per Spanish character (``variance_``), from the 1-1 beads of a first pass."""
        self.ratio_, self.variance_ = 1.0, 6.8  # Gale & Church's defaults for the first pass
        l_es, l_en = [], []
        for es, en in _parallel(notes):
            for a, b in self.align(es, en):
                if len(a) == len(b) == 1:
                    l_es.append(es[a[0]][1] - es[a[0]][0])
                    l_en.append(en[b[0]][1] - en[b[0]][0])
        l_es, l_en = np.array(l_es, dtype=float), np.array(l_en, dtype=float)
        self.ratio_ = float(l_en.sum() / l_es.sum())
        self.variance_ = float(np.mean((l_en - self.ratio_ * l_es) ** 2 / l_es))
        return self

    def align(self, es: Sequence[tuple[int, int]], en: Sequence[tuple[int, int]]) -> list[tuple[range, range]]:
        """Beads (Spanish segment indices, English segment indices), in order, covering both sides."""
        a = np.concatenate([[0.0], np.cumsum([hi - lo for lo, hi in es], dtype=float)])
        b = np.concatenate([[0.0], np.cumsum([hi - lo for lo, hi in en], dtype=float)])
        n, m = len(es), len(en)
        beads = [(di, dj, -math.log(p)) for (di, dj), p in BEADS.items()]
        cost = np.full((n + 1, m + 1), np.inf)
        back = np.full((n + 1, m + 1), -1)
        cost[0, 0] = 0.0
        skips = [(k, (prior + self._length_cost(0.0, b[dj:] - b[: m + 1 - dj])).tolist())
                 for k, (di, dj, prior) in enumerate(beads) if di == 0]
        for i in range(n + 1):
            for k, (di, dj, prior) in enumerate(beads):  # beads that consume Spanish: one row at a time
                if 0 < di <= i:
                    c = cost[i - di, : m + 1 - dj] + prior + self._length_cost(a[i] - a[i - di], b[dj:] - b[: m + 1 - dj])
                    better = c < cost[i, dj:]
                    cost[i, dj:][better], back[i, dj:][better] = c[better], k
            for k, step in skips:  # English-only beads: along the row
                dj = beads[k][1]
                for j in range(dj, m + 1):
                    if cost[i, j - dj] + step[j - dj] < cost[i, j]:
                        cost[i, j], back[i, j] = cost[i, j - dj] + step[j - dj], k
        out, i, j = [], n, m
        while i or j:
            di, dj, _ = beads[back[i, j]]
            out.append((range(i - di, i), range(j - dj, j)))
            i, j = i - di, j - dj
        return out[::-1]

    def _length_cost(self, l_es, l_en):
        """-log P(length difference) of a bead: Gale-Church's two-sided normal tail."""
        mean = np.maximum((l_es + l_en / self.ratio_) / 2, 1.0)
        z = np.abs(self.ratio_ * l_es - l_en) / np.sqrt(mean * self.variance_)
        return -(math.log(2) + log_ndtr(-z))


def _parallel(notes: pl.DataFrame) -> Iterable[tuple[list, list]]:
    for text_es, text in notes.select(TEXT_ES, TEXT).iter_rows():
        yield translation_segments(text_es or "", "es"), translation_segments(text or "", "en")


class WordAligner(ParamsMixin):
    """IBM Model 1 in both directions with a fixed diagonal prior (fast_align's, tension not learned).

    P(a_j = i) = null_prob for the NULL word, else (1 - null_prob) * exp(-diagonal * |i/m - j/l|)
    normalised over i. Translation tables are sparse over the word pairs seen in one aligned pair.

    Parameters
    ----------
    iterations: EM iterations per direction.
    diagonal: strength of the diagonal prior (0 = plain IBM Model 1; fast_align starts at 4).
    null_prob: prior probability of aligning a word to NULL.
    max_words: sentence pairs with a side longer than this are left out of training.
    """

    def __init__(self, *, iterations: int = 5, diagonal: float = 4.0, null_prob: float = 0.08, max_words: int = 100):
        self.iterations = iterations
        self.diagonal = diagonal
        self.null_prob = null_prob
        self.max_words = max_words

    def fit(self, pairs: Iterable[tuple[Sequence[str], Sequence[str]]]) -> WordAligner:
        """Learn from (Spanish words, English words) sentence pairs."""
        pairs = [(es, en) for es, en in pairs if 0 < len(es) <= self.max_words and 0 < len(en) <= self.max_words]
        self.es_vocab_ = ["<null>", *sorted({w for es, _ in pairs for w in es})]
        self.en_vocab_ = ["<null>", *sorted({w for _, en in pairs for w in en})]
        self._ids()
        ids = [(self._encode(es, self._es_id), self._encode(en, self._en_id)) for es, en in pairs]
        self.en_given_es_ = self._em(ids, len(self.en_vocab_))
        self.es_given_en_ = self._em([(en, es) for es, en in ids], len(self.es_vocab_))
        return self

    def _ids(self) -> None:
        self._es_id = {w: i for i, w in enumerate(self.es_vocab_)}
        self._en_id = {w: i for i, w in enumerate(self.en_vocab_)}

    @staticmethod
    def _encode(words: Sequence[str], vocab: dict[str, int]) -> np.ndarray:
        return np.array([vocab.get(w, -1) for w in words], dtype=np.int64)

    def _prior(self, m: int, n: int) -> np.ndarray:
        """[m + 1, n] P(a_j = i) for source positions 0 (NULL), 1..m and target positions j."""
        i = (np.arange(m) + 0.5)[:, None] / m
        j = (np.arange(n) + 0.5)[None, :] / n
        h = np.exp(-self.diagonal * np.abs(i - j))
        return np.vstack([np.full((1, n), self.null_prob), (1 - self.null_prob) * h / h.sum(0)])

    def _em(self, ids: list[tuple[np.ndarray, np.ndarray]], n_target: int) -> tuple[np.ndarray, np.ndarray]:
        """Sparse P(target | source): (sorted keys source * n_target + target, probabilities)."""
        keys, occ, weight, offset = [], [], [], 0
        for src, tgt in ids:
            full = np.concatenate([[0], src])
            keys.append((full[:, None] * n_target + tgt[None, :]).ravel())
            occ.append(np.broadcast_to(offset + np.arange(len(tgt)), (len(full), len(tgt))).ravel())
            weight.append(self._prior(len(src), len(tgt)).ravel())
            offset += len(tgt)
        uniq, kind = np.unique(np.concatenate(keys), return_inverse=True)
        kind = kind.astype(np.int32)
        occ = np.concatenate(occ).astype(np.int32)
        weight = np.concatenate(weight).astype(np.float32)
        source = (uniq // n_target).astype(np.int64)
        prob = np.ones(len(uniq), dtype=np.float32)
        for _ in range(self.iterations):
            joint = weight * prob[kind]
            joint /= np.bincount(occ, joint, minlength=offset).astype(np.float32)[occ]
            counts = np.bincount(kind, joint, minlength=len(uniq))
            prob = (counts / np.bincount(source, counts)[source]).astype(np.float32)
        return uniq, prob

    def _table(self, table: tuple[np.ndarray, np.ndarray], src: np.ndarray, tgt: np.ndarray, n_target: int) -> np.ndarray:
        """[len(src) + 1, len(tgt)] P(tgt_j | src_i) with row 0 = NULL; unseen pairs get 1e-7."""
        uniq, prob = table
        full = np.concatenate([[0], src])
        keys = full[:, None] * n_target + tgt[None, :]
        at = np.clip(np.searchsorted(uniq, keys), 0, len(uniq) - 1)
        found = (uniq[at] == keys) & (full[:, None] >= 0) & (tgt[None, :] >= 0)
        return np.where(found, prob[at], 1e-7)

    def links(self, es: Sequence[str], en: Sequence[str], how: str) -> set[tuple[int, int]]:
        """Word links (Spanish position, English position) of one sentence pair, both directions'
        Viterbi links combined by ``how`` (see ``symmetrize``)."""
        if not es or not en:
            return set()
        s, e = self._encode(es, self._es_id), self._encode(en, self._en_id)
        forward = self._prior(len(s), len(e)) * self._table(self.en_given_es_, s, e, len(self.en_vocab_))
        backward = self._prior(len(e), len(s)) * self._table(self.es_given_en_, e, s, len(self.es_vocab_))
        a = {(int(i) - 1, j) for j, i in enumerate(forward.argmax(0)) if i > 0}
        b = {(i, int(j) - 1) for i, j in enumerate(backward.argmax(0)) if j > 0}
        return symmetrize(a, b, how)


def symmetrize(a: set, b: set, how: str) -> set[tuple[int, int]]:
    """Combine two directional link sets: "intersect", "union", or Koehn et al. (2003)'s
    "grow-diag" / "grow-diag-final" (intersection grown by union neighbours, then any union link
    of a still unlinked word)."""
    if how == "intersect":
        return a & b
    union = a | b
    if how == "union":
        return union
    out = a & b
    rows, cols = {i for i, _ in out}, {j for _, j in out}

    def add(p: tuple[int, int]) -> bool:
        if p in out or (p[0] in rows and p[1] in cols):
            return False
        out.add(p)
        rows.add(p[0])
        cols.add(p[1])
        return True

    grew = True
    while grew:
        grew = False
        for i, j in sorted(out):
            for p in ((i + di, j + dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)):
                if p in union and add(p):
                    grew = True
    if how == "grow-diag-final":
        for p in sorted(union - out):
            add(p)
    return out


# Trimmed from the ends of a projected (English) span.
_FUNCTION_WORDS = frozenset(fold(w) for w in LANGUAGES["en"].stopwords | {"not", "has", "had", "have", "be", "or"})



class ParallelNote:
    """One note's Spanish and English words, sentence beads and (lazily) word links per bead."""

    def __init__(self, text_es: str, text: str, sentences: SentenceAligner, words: WordAligner):
        es_seg, en_seg = translation_segments(text_es, "es"), translation_segments(text, "en")
        self.beads = sentences.align(es_seg, en_seg)
        es_bead = {k: b for b, (es, _) in enumerate(self.beads) for k in es}
        en_bead = {k: b for b, (_, en) in enumerate(self.beads) for k in en}
        self.es, self.en = Words.of(text_es, es_seg), Words.of(text, en_seg)
        self.es_bead = [es_bead[k] for k in self.es.segment]
        self.en_bead = [en_bead[k] for k in self.en.segment]
        self.words = words
        self._links: dict[tuple[int, str], dict[int, list[int]]] = {}

    def pairs(self) -> Iterable[tuple[list[str], list[str]]]:
        """Word lists of each bead with words on both sides (word-aligner training data)."""
        for b in range(len(self.beads)):
            es, en = self._side(self.es_bead, b), self._side(self.en_bead, b)
            if len(es) and len(en):
                yield [self.es.words[k] for k in es], [self.en.words[k] for k in en]

    @staticmethod
    def _side(bead_of: list[int], b: int) -> range:
        return range(bisect.bisect_left(bead_of, b), bisect.bisect_right(bead_of, b))

    def linked(self, k: int, how: str) -> list[int]:
        """English word indices linked to Spanish word ``k`` (links symmetrised by ``how``)."""
        b = self.es_bead[k]
        if (b, how) not in self._links:
            es, en = self._side(self.es_bead, b), self._side(self.en_bead, b)
            table: dict[int, list[int]] = {}
            for i, j in self.words.links([self.es.words[x] for x in es], [self.en.words[x] for x in en], how):
                table.setdefault(es[i], []).append(en[j])
            self._links[b, how] = table
        return self._links[b, how].get(k, [])

    def project(self, start: int, end: int, *, symmetrize: Sequence[str], max_ratio: float, slack: int, max_gap: int,
                trim: bool) -> tuple[int, int] | None:
        """English character span of the Spanish span [start, end), or None: the English words linked
        to its words (by the first of ``symmetrize`` that links any) in the line with most of them,
        cut at gaps of more than ``max_gap`` unlinked words (the largest run kept), with ``trim``
        function words dropped at both ends; None when longer than ``max_ratio`` * source words + ``slack``."""
        source = [k for k, (s, e) in enumerate(zip(self.es.starts, self.es.ends)) if s < end and start < e]
        target = []
        for how in symmetrize:
            target = sorted({j for k in source for j in self.linked(k, how)})
            if target:
                break
        if not target:
            return None
        lines = [self.en.segment[j] for j in target]
        line = max(set(lines), key=lambda s: (lines.count(s), -s))
        target = [j for j in target if self.en.segment[j] == line]
        runs = [[target[0]]]
        for j in target[1:]:
            if j - runs[-1][-1] > max_gap + 1:
                runs.append([])
            runs[-1].append(j)
        run = max(runs, key=len)
        lo, hi = run[0], run[-1]
        while trim and lo < hi and self.en.words[lo] in _FUNCTION_WORDS:
            lo += 1
        while trim and hi > lo and self.en.words[hi] in _FUNCTION_WORDS:
            hi -= 1
        if hi - lo + 1 > max_ratio * len(source) + slack:
            return None
        return self.en.starts[lo], self.en.ends[hi]


def parallel_notes(notes: pl.DataFrame, sentences: SentenceAligner, words: WordAligner) -> dict[str, ParallelNote]:
    return {note_id: ParallelNote(text_es or "", text or "", sentences, words)
            for note_id, text_es, text in notes.select(NOTE_ID, TEXT_ES, TEXT).iter_rows()}


def fit_aligners(notes: pl.DataFrame, *, sentences: SentenceAligner | None = None,
                 words: WordAligner | None = None) -> tuple[SentenceAligner, WordAligner]:
    """Fit the sentence aligner, then the word aligner on its beads, from parallel notes."""
    sentences = (sentences or SentenceAligner()).fit(notes)
    words = words or WordAligner()
    pairs = [p for note in parallel_notes(notes, sentences, words).values() for p in note.pairs()]
    return sentences, words.fit(pairs)


def project_spans(notes: pl.DataFrame, evidence: pl.DataFrame, sentences: SentenceAligner, words: WordAligner, *,
                  symmetrize: Sequence[str] = ("intersect", "grow-diag-final"), max_ratio: float = 2.0, slack: int = 2,
                  max_gap: int = 2, trim: bool = True) -> pl.DataFrame:
    """``evidence`` (offsets into ``text_es``) projected onto ``text``, in ``SPAN_SCHEMA``: the
    English span (pieces joined by a space) and its offsets into ``text``. Pieces that do not
    project are dropped, and rows left with none. Keywords: see ``ParallelNote.project``."""
    texts = dict(notes.select(NOTE_ID, TEXT).iter_rows())
    parallel = parallel_notes(notes.filter(pl.col(NOTE_ID).is_in(evidence[NOTE_ID].unique().implode())),
                              sentences, words)
    rows = []
    for note_id, system, code, offsets in evidence.select(NOTE_ID, SYSTEM, CODE, SPAN_OFFSETS).iter_rows():
        note = parallel[note_id]
        pieces = []
        for piece in offsets.split(";"):
            start, end = map(int, piece.split())
            hit = note.project(start, end, symmetrize=symmetrize, max_ratio=max_ratio, slack=slack, max_gap=max_gap,
                               trim=trim)
            if hit and hit not in pieces:
                pieces.append(hit)
        if pieces:
            pieces.sort()
            rows.append((note_id, system, code, " ".join(texts[note_id][s:e] for s, e in pieces),
                         ";".join(f"{s} {e}" for s, e in pieces)))
    return pl.DataFrame(rows, schema=SPAN_SCHEMA, orient="row")


def corpus_aligners(*frames: pl.DataFrame | None) -> tuple[SentenceAligner, WordAligner]:
    """Aligners fitted on the parallel notes of ``frames`` (those with ``text_es`` and ``text``; None
    is skipped): the training and unlabelled notes, never the dev notes whose spans they project."""
    parallel = pl.concat([frame.select(NOTE_ID, TEXT_ES, TEXT) for frame in frames if frame is not None
                          and {TEXT_ES, TEXT} <= set(frame.columns)]).drop_nulls()
    return fit_aligners(parallel)


def project_corpus(notes: pl.DataFrame, evidence: pl.DataFrame, aligners: tuple[SentenceAligner, WordAligner]) -> pl.DataFrame:
    """``evidence`` (offsets into ``text_es``) projected onto ``text`` by ``aligners``
    (``corpus_aligners``). Every gold code of an evidence row stays a row of its note, with no span
    when none of its pieces projected."""
    projected = project_spans(notes, evidence, *aligners)
    unprojected = evidence.select(NOTE_ID, SYSTEM, CODE).unique(maintain_order=True).join(projected, on=[NOTE_ID, SYSTEM, CODE], how="anti")
    return pl.concat([projected, unprojected.with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in (SPAN_TEXT, SPAN_OFFSETS))
                      .select(SPAN_SCHEMA.names())])
