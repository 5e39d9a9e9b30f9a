"""Mentions of codes in notes, grouped per (note, code): what the two lexicon sources report per code.

A lexicon finds phrases in a note; each phrase links to codes (``expand_links``), so one code may
be mentioned many times. A source's row per (note, code) holds its best mention (whose evidence span it reports),
how many mentions there were, and their noisy-or. Both lexicons group the mentions of a whole
batch at once with two stable sorts instead of a Python loop per mention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Mentions:
    """Mentions grouped per (note, code); groups in the order of their first mention."""

    best: np.ndarray
    """[n_groups] the row of each group's best mention."""
    count: np.ndarray
    """[n_groups] mentions per group."""
    by_group: np.ndarray
    """Rows sorted by (note, code), text order within a group."""
    starts: np.ndarray
    """Where each group begins in ``by_group`` (groups in (note, code) order)."""
    order: np.ndarray
    """Groups in (note, code) order -> groups in the order of their first mention."""

    def noisy_or(self, score: np.ndarray) -> np.ndarray:
        """[n_groups] 1 - the product of (1 - score) over a group's mentions, multiplied in text order."""
        if not len(self.starts):
            return score[:0]
        return (1.0 - np.multiply.reduceat((1.0 - score)[self.by_group], self.starts))[self.order]


def expand_links(ptr: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every link of each found key, in order: (the position in ``keys`` it came from, the link),
    where key ``k``'s links are ``ptr[k]:ptr[k + 1]`` (a lexicon's phrase -> code table, a search's code -> terms)."""
    counts = ptr[keys + 1] - ptr[keys]
    owner = np.repeat(np.arange(len(keys)), counts)
    return owner, np.arange(counts.sum()) + np.repeat(ptr[keys] - (np.cumsum(counts) - counts), counts)


def group_mentions(note: np.ndarray, code: np.ndarray, *, prefer: Sequence[np.ndarray]) -> Mentions:
    """Group mentions (rows in text order, notes in input order) by ``note`` and ``code`` (integer
    arrays); a group's best mention is the highest by ``prefer`` (arrays compared in turn, higher
    first), the first of equals."""
    by_group = np.lexsort((code, note))  # stable: text order within a group
    changed = (np.diff(note[by_group]) != 0) | (np.diff(code[by_group]) != 0)
    starts = np.flatnonzero(np.r_[len(by_group) > 0, changed])
    order = np.argsort(by_group[starts])  # by first mention: rows are in text order
    group = np.empty(len(note), dtype=np.int64)
    group[by_group] = np.cumsum(np.r_[False, changed])  # each row's group, in (note, code) order
    keys = [np.asarray(key, dtype=np.float64) for key in prefer]
    best = np.lexsort((*(-key for key in reversed(keys)), group))[starts]  # stable: the first of equals
    return Mentions(best=best[order], count=np.diff(np.r_[starts, len(by_group)])[order], by_group=by_group,
                    starts=starts, order=order)


def relative_position(start: np.ndarray, note: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """[n] where each span starts in its note (``note``: indices into ``texts``), as a share of the
    note's length, so that the reranker can learn where in a note the codes coders keep are mentioned."""
    lengths = np.array([max(len(text), 1) for text in texts], dtype=np.float64)
    return start / lengths[note]
