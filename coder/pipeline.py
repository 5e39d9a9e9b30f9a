"""One batch of notes through the model's stages, in order.

    read -> screen  (coder.io: the run reads a batch and quarantines the rows it cannot code)
    chunk and score (PLM-ICD, coder.model.scorer)
    candidate sources (coder.candidates.stack: every source the batch's columns allow, PLM-ICD's
                    frame last; the ontology searches then score the other sources' codes too)
    rerank          (coder.rerank: calibrated score and threshold per candidate)
    LLM vote        (coder.llm.vote, optional)
    validate        (coder.validate: only assignable codes pass)
    rank, threshold and top-k (coder.rank)
    -> write        (coder.io.parts: the run writes the batch)

``code_batch`` is the stage list; every engine (local, Ray) and the Python API call it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import polars as pl

from coder.llm.vote import LLMStage, merge_votes
from coder.rank import rank_and_cut
from coder.rerank.score import rerank
from coder.schema import NOTE_ID

if TYPE_CHECKING:
    from coder.assembly import Model


@dataclass(frozen=True)
class CodedBatch:
    """A batch's predictions and what the run counts about it."""

    predictions: pl.DataFrame
    """PREDICTION_SCHEMA rows."""
    truncated: tuple[str, ...] = ()
    """Note ids scored on their beginning only."""
    unprocessable: tuple[str, ...] = ()
    """Note ids with no tokens: no predictions, quarantined by the run."""
    counts: dict[str, int | float] = field(default_factory=dict)
    """Seconds per stage (``seconds.<stage>``) and the LLM stage's counts (``llm.*``), summed over a run."""


@contextmanager
def _timed(counts: dict[str, int | float], stage: str) -> Iterator[None]:
    tick = time.perf_counter()
    yield
    counts[f"seconds.{stage}"] = time.perf_counter() - tick


def code_batch(model: Model, notes: pl.DataFrame, *, top_k: int, threshold_only: bool = False,
               llm: LLMStage | None = None) -> CodedBatch:
    """Code screened ``notes`` (note_id and the model's text columns the dump has)."""
    counts: dict[str, int | float] = {}
    with _timed(counts, "score"):
        scored = model.scorer.score(notes, **model.ranking.plm_request(top_k=top_k, threshold_only=threshold_only))
        notes = notes.filter(~pl.col(NOTE_ID).is_in(list(scored.unprocessable)))
    with _timed(counts, "candidates"):
        frames = model.stack.frames(notes, plm=scored)
    with _timed(counts, "rerank"):
        candidates = rerank(model.stack.merge(frames, plm=scored), ranking=model.ranking, sources=tuple(frames))
    if llm is not None:
        with _timed(counts, "llm"):
            votes = llm.vote(notes, candidates, text_column=model.scorer.text_column, per_note=top_k)
            candidates = merge_votes(candidates, votes.votes, weight=llm.settings.weight)
            counts |= votes.batch_counts()
    with _timed(counts, "validate"):
        candidates = model.gate.validate(candidates)
    with _timed(counts, "rank"):
        predictions = rank_and_cut(candidates, top_k=top_k, threshold_only=threshold_only, describe=model.describe)
    return CodedBatch(predictions=predictions, truncated=scored.truncated, unprocessable=scored.unprocessable, counts=counts)
