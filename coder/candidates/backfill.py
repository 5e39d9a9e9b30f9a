"""Backfill: the ontology searches also score the codes the other sources propose.

A search proposes its top k codes per note and system; a code that another source (a lexicon,
PLM-ICD) proposed and the search ranked lower reads 0 in the search's score column, as if its
description matched nothing in the note. Backfilled, every candidate also carries each search's
exact score in ``<name>_all`` (the search's own rows: their score), while ``<name>`` and its rank
keep saying what the search proposed: the reranker then tells apart codes of one category by their
descriptions, which a lexicon or PLM-ICD seen on few notes cannot (benchmarks/accuracy.py, dev MAP).
PLM-ICD backfills the same way (``plm_icd_all``, from the scores of all its labels that it computed
anyway, ``coder.model.scorer.Scored``): a code it ranked below its top 50 is not a code it scored 0.
Backfilled rows propose nothing: ``merge_candidates`` keeps only the codes some source proposed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import polars as pl

from coder.schema import KEY


def backfill(frames: Mapping[str, pl.DataFrame], *, sources: Iterable, notes: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """``frames`` (source name -> candidate frame) where each source with ``backfill`` set gets
    ``<name>_all`` and rows (that column alone, no score, rank or evidence) for the (note, system,
    code) keys of the other frames it lacks; ``notes`` holds the text columns the sources read."""
    out = dict(frames)
    backfilling = [source for source in sources if getattr(source, "backfill", False) and source.name in frames]
    if not backfilling:  # no source scores the others' codes: no key set to build per batch
        return out
    keys = pl.concat([frame.select(KEY) for frame in frames.values()]).unique()
    for source in backfilling:
        name, own = source.name, frames[source.name]
        missing = keys.join(own.select(KEY), on=list(KEY), how="anti")
        out[name] = pl.concat([own.with_columns(pl.col(name).alias(f"{name}_all")),
                               source.score(notes, missing).rename({name: f"{name}_all"})], how="diagonal_relaxed")
    return out
