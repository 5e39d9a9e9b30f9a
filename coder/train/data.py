"""Training data: notes and gold codes read from parquet, labels checked against the ontology."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from coder.model.folder import Label
from coder.errors import InputFileError
from coder.schema import CODE, GOLD_SCHEMA, NOTE_ID, SYSTEM, SYSTEMS

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"


def _read(path: Path, columns: Sequence[str]) -> pl.DataFrame:
    try:
        frame = pl.read_parquet(path)
    except (OSError, pl.exceptions.ComputeError) as error:
        raise InputFileError(f"cannot read {path} as parquet: {type(error).__name__}") from None
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise InputFileError(f"{path} lacks column(s) {missing}; it has {frame.columns}")
    return frame.select(columns)


def read_notes(path: Path, *, text_column: str) -> pl.DataFrame:
    """note_id + text column, rows with null or blank text or repeated ids dropped (counted in the log)."""
    frame = _read(path, [NOTE_ID, text_column]).with_columns(pl.col(NOTE_ID).cast(pl.String))
    kept = frame.filter(pl.col(NOTE_ID).is_not_null() & (pl.col(text_column).str.strip_chars().str.len_chars() > 0))
    kept = kept.unique(NOTE_ID, keep="first", maintain_order=True)
    if kept.height < frame.height:
        logger.warning("%s: dropped %d of %d rows (null id, blank text or repeated id)", path, frame.height - kept.height, frame.height)
    return kept


def read_codes(path: Path) -> pl.DataFrame:
    """Gold codes (note_id, code, system), systems checked."""
    frame = _read(path, list(GOLD_SCHEMA)).cast(dict(GOLD_SCHEMA))
    bad = sorted(set(frame[SYSTEM].unique().to_list()) - set(SYSTEMS))
    if bad:
        raise InputFileError(f"{path}: column {SYSTEM!r} has values {bad}; expected one of {list(SYSTEMS)}")
    return frame


def canonical_codes(codes: pl.DataFrame, *, ontology) -> pl.DataFrame:
    """Gold codes in the ontology's canonical form, with ``known`` = the ontology (or user list) knows them."""
    pairs = codes.select(CODE, SYSTEM).unique()
    infos = [ontology.lookup(code, system) for code, system in pairs.iter_rows()]
    lookup = pairs.with_columns(
        pl.Series("canonical", [info.canonical or code for info, code in zip(infos, pairs[CODE], strict=True)], dtype=pl.String),
        pl.Series("known", [info.status != UNKNOWN for info in infos], dtype=pl.Boolean),
    )
    return (
        codes.join(lookup, on=[CODE, SYSTEM], how="left")
        .select(NOTE_ID, SYSTEM, pl.col("canonical").alias(CODE), "known")
        .unique(maintain_order=True)
    )


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


def gold_by_system(canonical: pl.DataFrame) -> dict[str, dict[str, set[str]]]:
    """system -> note id -> canonical gold codes (all of them, known or not: MAP counts every gold code)."""
    gold: dict[str, dict[str, set[str]]] = {system: {} for system in SYSTEMS}
    for note_id, system, code in canonical.select(NOTE_ID, SYSTEM, CODE).iter_rows():
        gold[system].setdefault(note_id, set()).add(code)
    return gold
