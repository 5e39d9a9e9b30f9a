"""One candidate frame per batch: every source's proposals merged, with the reranker's features.

Training (out-of-fold stacking) and prediction turn source frames into features through the
same ``assemble``, so the reranker never sees features computed differently from the ones it
was fitted on. One row per (note_id, system, code); a source that did not propose a code
leaves its score at 0 and its rank at ``ABSENT_RANK``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from coder.candidates.lexicon import EVIDENCE_COLUMNS, EvidenceLexicon
from coder.candidates.ontology_search import OntologySearch
from coder.schema import CODE, NOTE_ID, SYSTEM
from coder.candidates.tfidf import TfidfClassifier

logger = logging.getLogger(__name__)

KEY = (NOTE_ID, SYSTEM, CODE)
LABEL = "label"
ABSENT_RANK = 100
PLM_ICD = "plm_icd"  # score column of the PLM-ICD classifier, given to ``build`` as an extra source
# Source score columns in evidence priority: a lexicon span beats a matched sentence.
SOURCE_ORDER = ("lexicon", "ontology", "tfidf", PLM_ICD)
PRIOR = "prior"
PRIOR_SCHEMA = pl.Schema({SYSTEM: pl.String, CODE: pl.String, PRIOR: pl.Int64})


def code_prior(codes: pl.DataFrame) -> pl.DataFrame:
    """How many training notes carry each code (PRIOR_SCHEMA)."""
    return codes.group_by(SYSTEM, CODE).agg(pl.col(NOTE_ID).n_unique().cast(pl.Int64).alias(PRIOR))


def merge_candidates(sources: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    """Outer-join per-source frames on (note_id, system, code); each source's score column is
    named after the source. Adds ``<source>_rank`` (1 = best in its note and system) where a
    source lacks one, and keeps the evidence of the first source in ``SOURCE_ORDER`` that has it."""
    merged: pl.DataFrame | None = None
    evidence_sources = []
    for name in sorted(sources, key=_priority):
        frame = sources[name]
        if f"{name}_rank" not in frame.columns:
            frame = frame.with_columns(
                pl.col(name).rank("ordinal", descending=True).over(SYSTEM, NOTE_ID).cast(pl.Int32).alias(f"{name}_rank"))
        if EVIDENCE_COLUMNS[0] in frame.columns:
            frame = frame.rename({c: f"{c}:{name}" for c in EVIDENCE_COLUMNS})
            evidence_sources.append(name)
        merged = frame if merged is None else merged.join(frame, on=list(KEY), how="full", coalesce=True)
    if merged is None:
        raise ValueError("merge_candidates needs at least one source")
    return merged.with_columns(
        pl.coalesce([pl.col(f"{c}:{name}") for name in evidence_sources]).alias(c) if evidence_sources
        else pl.lit(None, dtype=pl.String if c == "evidence_text" else pl.Int32).alias(c)
        for c in EVIDENCE_COLUMNS
    ).drop([f"{c}:{name}" for c in EVIDENCE_COLUMNS for name in evidence_sources])


def _priority(name: str) -> int:
    return SOURCE_ORDER.index(name) if name in SOURCE_ORDER else len(SOURCE_ORDER)


def add_features(frame: pl.DataFrame, *, prior: pl.DataFrame, sources: tuple[str, ...]) -> pl.DataFrame:
    """Fill absent-source values and add code-level and note-level features.

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
                  if c not in ranks and (c.startswith("lexicon") or c in sources)]
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
    return _hierarchy(frame)


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
    self-join of all candidate pairs held ~500 MB for a batch of 256 notes."""
    codes = frame.with_columns(pl.col(CODE).str.replace(".", "", literal=True).alias("_bare"))
    prefixes = (codes.with_columns(pl.int_ranges(0, pl.col("_bare").str.len_chars()).alias("_length"))
                .explode("_length").drop_nulls("_length")
                .with_columns(pl.col("_bare").str.slice(0, pl.col("_length"))).drop("_length"))
    return codes.join(prefixes, on=[NOTE_ID, SYSTEM, "_bare"], suffix="_child").drop("_bare")


def assemble(frames: Mapping[str, pl.DataFrame], *, prior: pl.DataFrame) -> pl.DataFrame:
    """Merge source frames and add features: the one path from sources to the reranker's input."""
    sources = tuple(sorted(frames, key=_priority))
    return add_features(merge_candidates(frames), prior=prior, sources=sources).sort(list(KEY))


def feature_columns(frame: pl.DataFrame) -> list[str]:
    """The numeric and boolean columns a reranker reads (everything but keys, evidence, label)."""
    skip = {*KEY, *EVIDENCE_COLUMNS, LABEL, PRIOR}
    return [c for c, dtype in frame.schema.items() if c not in skip and (dtype.is_numeric() or dtype == pl.Boolean)]


def with_labels(frame: pl.DataFrame, codes: pl.DataFrame) -> pl.DataFrame:
    """Add ``label`` (1 when the candidate is a gold code of its note)."""
    gold = codes.select(NOTE_ID, SYSTEM, CODE).unique().with_columns(pl.lit(1, dtype=pl.Int8).alias(LABEL))
    return frame.join(gold, on=list(KEY), how="left").with_columns(pl.col(LABEL).fill_null(0))


@dataclass(frozen=True)
class CandidateBuilder:
    """The fitted candidate sources and the training code prior; ``build`` gives the feature frame.

    A source whose text column is missing from the notes is skipped (e.g. the Spanish lexicon for
    an English-only dump); ``sources_for`` says which sources a batch gets.
    """

    prior: pl.DataFrame
    lexicon: EvidenceLexicon | None = None
    search: OntologySearch | None = None
    classifier: TfidfClassifier | None = None

    def sources_for(self, columns: list[str], *, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
        """Names of the sources that can run on notes with ``columns``, in ``SOURCE_ORDER``."""
        names = [name for name, part in self._parts().items() if part.text_column in columns]
        return tuple(sorted([*names, *extra], key=_priority))

    def text_columns(self) -> tuple[str, ...]:
        """The note columns the sources read, each once."""
        return tuple(dict.fromkeys(part.text_column for part in self._parts().values()))

    def _parts(self) -> dict[str, EvidenceLexicon | OntologySearch | TfidfClassifier]:
        parts = {"lexicon": self.lexicon, "ontology": self.search, "tfidf": self.classifier}
        return {name: part for name, part in parts.items() if part is not None}

    def source_frames(self, notes: pl.DataFrame, *, search_candidates: pl.DataFrame | None = None) -> dict[str, pl.DataFrame]:
        """Each runnable source's own candidates for ``notes``. ``search_candidates``: ontology
        search results computed earlier, used instead of running the search (it does not depend
        on training notes, so out-of-fold stacking runs it once)."""
        frames: dict[str, pl.DataFrame] = {}
        if search_candidates is not None:
            frames["ontology"] = search_candidates.join(notes.select(NOTE_ID), on=NOTE_ID, how="semi")
        for name, part in self._parts().items():
            if name in frames:
                continue
            if part.text_column not in notes.columns:
                logger.info("source %s skipped: notes have no %r column", name, part.text_column)
            else:
                frames[name] = part.candidates(notes)
        return frames

    def build(self, notes: pl.DataFrame, *, extra: Mapping[str, pl.DataFrame] | None = None,
              search_candidates: pl.DataFrame | None = None) -> pl.DataFrame:
        """The feature frame of ``notes``. ``extra``: more sources' frames (note_id, system, code,
        <name>), e.g. ``{"plm_icd": scores}``."""
        frames = self.source_frames(notes, search_candidates=search_candidates)
        frames.update({name: frame.join(notes.select(NOTE_ID), on=NOTE_ID, how="semi") for name, frame in (extra or {}).items()})
        return assemble(frames, prior=self.prior)

    def save(self, path: Path) -> None:
        """One subfolder per source plus ``prior.parquet``."""
        path.mkdir(parents=True, exist_ok=True)
        self.prior.write_parquet(path / "prior.parquet")
        for name, part in self._parts().items():
            part.save(path / name)

    @classmethod
    def load(cls, path: Path) -> CandidateBuilder:
        def part(name, kind):
            return kind.load(path / name) if (path / name).is_dir() else None

        return cls(prior=pl.read_parquet(path / "prior.parquet"), lexicon=part("lexicon", EvidenceLexicon),
                   search=part("ontology", OntologySearch), classifier=part("tfidf", TfidfClassifier))


def top_codes(frame: pl.DataFrame, *, score: str) -> dict[str, dict[str, list[str]]]:
    """system -> note id -> codes by descending ``score`` (the MAP input)."""
    out: dict[str, dict[str, list[str]]] = {}
    ordered = frame.sort([NOTE_ID, score], descending=[False, True])
    for (system,), part in ordered.group_by(SYSTEM):
        out[system] = {note_id: grp[CODE].to_list() for (note_id,), grp in part.group_by(NOTE_ID, maintain_order=True)}
    return out

