"""Training labels: the canonical training codes the ontology knows, and their target matrix."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from coder.model.folder import Label
from coder.schema import CODE, NOTE_ID, SYSTEM

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelSet:
    """Labels to train, and the codes left out because the ontology does not know them."""

    labels: tuple[Label, ...]
    unknown: tuple[str, ...]  # "system code", sorted


def build_labels(canonical: pl.DataFrame) -> LabelSet:
    """One label per known (system, code) seen in training; unknown codes are warned about with counts."""
    known = canonical.filter("known").select(SYSTEM, CODE).unique().sort(SYSTEM, CODE)
    unknown_rows = canonical.filter(~pl.col("known"))
    counts = Counter(f"{system} {code}" for system, code in unknown_rows.select(SYSTEM, CODE).iter_rows())
    if counts:
        logger.warning(
            "%d training codes (%d rows) are unknown to the ontology and left out (pass --codes-file to vouch for them): %s",
            len(counts), unknown_rows.height, ", ".join(f"{code} x{n}" for code, n in counts.most_common(20)),
        )
    labels = tuple(Label(system=system, code=code) for system, code in known.iter_rows())
    return LabelSet(labels=labels, unknown=tuple(sorted(counts)))


def label_matrix(note_ids: Sequence[str], canonical: pl.DataFrame, *, labels: Sequence[Label]) -> np.ndarray:
    """[n_notes, n_labels] float32 multi-hot targets (codes outside ``labels`` are ignored)."""
    row = {note_id: i for i, note_id in enumerate(note_ids)}
    column = {(label.system, label.code): j for j, label in enumerate(labels)}
    targets = np.zeros((len(note_ids), len(labels)), dtype=np.float32)
    for note_id, system, code in canonical.select(NOTE_ID, SYSTEM, CODE).iter_rows():
        if note_id in row and (system, code) in column:
            targets[row[note_id], column[system, code]] = 1.0
    return targets
