"""One candidate frame per batch: every source's proposals merged, and the reranker's features.

Training (out-of-fold stacking) and prediction turn source frames into features through the
same functions (``coder.candidates.stack``), so the reranker never sees features computed
differently from the ones it was fitted on. One row per (note_id, system, code); a source that did
not propose a code leaves its score at 0 and its rank at ``ABSENT_RANK``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import polars as pl

from coder.rank import score_rank
from coder.schema import CODE, EVIDENCE, EVIDENCE_COLUMNS, EVIDENCE_IN, KEY, NOTE_ID, SOURCE, SYSTEM

LABEL = "label"
ABSENT_RANK = 100
PRIOR = "prior"
PRIOR_SCHEMA = pl.Schema({SYSTEM: pl.String, CODE: pl.String, PRIOR: pl.Int64})


def code_prior(codes: pl.DataFrame) -> pl.DataFrame:
    """How many training notes carry each code (PRIOR_SCHEMA)."""
    return codes.group_by(SYSTEM, CODE).agg(pl.col(NOTE_ID).n_unique().cast(pl.Int64).alias(PRIOR)).sort(SYSTEM, CODE)


def merge_candidates(frames: Mapping[str, pl.DataFrame], *, columns: Mapping[str, str],
                     features: Mapping[str, Collection[str]]) -> pl.DataFrame:
    """Outer-join the sources' frames (given in evidence priority) on (note_id, system, code).

    Of each frame, the key, the evidence and the columns its source declares in ``features`` (source ->
    its ``get_feature_names_out()``) are kept: an undeclared column never becomes a reranker feature.
    Each source's score column is named after it; ``<source>_rank`` (1 = best in its note and
    system) is added where a source lacks one; the evidence columns come from the first source
    that has evidence for the row, and ``evidence_column`` names the column its offsets point into
    (``columns``: source -> the text column it reads); ``source`` joins the names of the
    sources that proposed the row. Rows without a rank (``coder.candidates.backfill``) only score:
    a code no source proposed is left out."""
    if not frames:
        raise ValueError("merge_candidates needs at least one source")
    kept: list[pl.DataFrame] = []
    with_evidence = []
    for name, frame in frames.items():
        frame = frame.select(c for c in frame.columns if c in KEY or c in EVIDENCE or c in features[name])
        if f"{name}_rank" not in frame.columns:
            frame = frame.with_columns(
                score_rank(name).alias(f"{name}_rank"))
        if EVIDENCE[0] in frame.columns:
            where = pl.when(pl.col(EVIDENCE[1]).is_not_null()).then(pl.lit(columns[name]))
            frame = frame.with_columns(where.alias(EVIDENCE_IN)).rename({c: f"{c}:{name}" for c in (*EVIDENCE, EVIDENCE_IN)})
            with_evidence.append(name)
        kept.append(frame)
    # One integer per key: each frame's three string columns are hashed once, where joining frame after frame
    # on them hashed the growing merged frame's again at every join.
    keys = pl.concat([frame.select(KEY) for frame in kept]).unique().with_row_index("_key")
    merged = keys
    for frame in kept:
        merged = merged.join(frame.join(keys, on=list(KEY)).drop(KEY), on="_key", how="left")
    merged = merged.drop("_key").filter(pl.any_horizontal([pl.col(f"{name}_rank").is_not_null() for name in frames]))
    evidence = [
        pl.coalesce([pl.col(f"{c}:{name}") for name in with_evidence]).alias(c) if with_evidence
        else pl.lit(None, dtype=dtype).alias(c)
        for c, dtype in {**EVIDENCE_COLUMNS, EVIDENCE_IN: pl.String}.items()
    ]
    proposed = [pl.when(pl.col(f"{name}_rank").is_not_null()).then(pl.lit(name)) for name in frames]
    return merged.with_columns(*evidence, pl.concat_str(proposed, separator="+", ignore_nulls=True).alias(SOURCE)).drop(
        [f"{c}:{name}" for c in (*EVIDENCE, EVIDENCE_IN) for name in with_evidence])


def add_features(frame: pl.DataFrame, *, prior: pl.DataFrame, sources: tuple[str, ...]) -> pl.DataFrame:
    """Fill absent-source values and add code-level and note-level features, rows sorted by key.

    Hierarchy features: candidates of the note and system sharing the code's 3-character
    category; whether a longer candidate code extends this one (a more specific sibling
    proposal) or this one extends a shorter candidate.
    """
    for name in sources:
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(0.0).alias(name), pl.lit(ABSENT_RANK, dtype=pl.Int32).alias(f"{name}_rank"))
    ranks = {f"{name}_rank" for name in sources}
    rank_fill = [pl.col(c).fill_null(ABSENT_RANK) for c in ranks]
    score_fill = [pl.col(c).fill_null(False if dtype == pl.Boolean else 0) for c, dtype in frame.schema.items()
                  if c not in ranks and any(c == name or c.startswith(f"{name}_") for name in sources)]
    frame = frame.with_columns(score_fill + rank_fill).join(prior, on=[SYSTEM, CODE], how="left")
    within = (NOTE_ID, SYSTEM)
    frame = frame.with_columns(
        pl.col(PRIOR).fill_null(0).log1p().alias("prior_log"),
        (pl.col(PRIOR).fill_null(0) > 0).cast(pl.Int8).alias("seen"),
        pl.col(CODE).str.replace(".", "", literal=True).str.len_chars().alias("code_length"),
        pl.len().over(*within, pl.col(CODE).str.slice(0, 3)).alias("same_category"),
        sum(((pl.col(f"{name}_rank") < ABSENT_RANK).cast(pl.Int8) for name in sources), pl.lit(0, dtype=pl.Int8))
        .alias("n_sources"),
    )
    for name in sources:
        frame = frame.with_columns(
            (pl.col(name) - pl.col(name).max().over(*within)).alias(f"{name}_gap"),
        )
    return _hierarchy(frame).sort(list(KEY))


def _hierarchy(frame: pl.DataFrame) -> pl.DataFrame:
    """``has_child``: another candidate of the note extends this code; ``has_parent``: this code
    extends another candidate."""
    pairs = extensions(frame.select(KEY))
    parents = pairs.select(KEY).unique().with_columns(pl.lit(1, dtype=pl.Int8).alias("has_child"))
    children = (pairs.select(NOTE_ID, SYSTEM, pl.col(f"{CODE}_child").alias(CODE)).unique()
                .with_columns(pl.lit(1, dtype=pl.Int8).alias("has_parent")))
    return (frame.join(parents, on=list(KEY), how="left").join(children, on=list(KEY), how="left")
            .with_columns(pl.col("has_child").fill_null(0), pl.col("has_parent").fill_null(0)))


def extensions(frame: pl.DataFrame) -> pl.DataFrame:
    """Pairs of rows of one note and system where the second code extends the first (without
    dots, it is longer and starts with it): ``frame``'s columns for the first, with ``_child``
    for the second. Each code's proper prefixes (at most ~7) are joined to the note's codes: a
    self-join of all candidate pairs would grow with the square of a note's candidates."""
    codes = frame.with_columns(pl.col(CODE).str.replace(".", "", literal=True).alias("_bare"))
    prefixes = (codes.with_columns(pl.int_ranges(0, pl.col("_bare").str.len_chars()).alias("_length"))
                .explode("_length").drop_nulls("_length")
                .with_columns(pl.col("_bare").str.slice(0, pl.col("_length"))).drop("_length"))
    return codes.join(prefixes, on=[NOTE_ID, SYSTEM, "_bare"], suffix="_child").drop("_bare")


def feature_columns(frame: pl.DataFrame) -> list[str]:
    """The numeric and boolean columns a reranker reads (everything but keys, evidence, label)."""
    skip = {*KEY, *EVIDENCE, LABEL, PRIOR}
    return [c for c, dtype in frame.schema.items() if c not in skip and (dtype.is_numeric() or dtype == pl.Boolean)]


def with_labels(frame: pl.DataFrame, codes: pl.DataFrame) -> pl.DataFrame:
    """Add ``label`` (1 when the candidate is a gold code of its note)."""
    gold = codes.select(NOTE_ID, SYSTEM, CODE).unique().with_columns(pl.lit(1, dtype=pl.Int8).alias(LABEL))
    return frame.join(gold, on=list(KEY), how="left").with_columns(pl.col(LABEL).fill_null(0))
