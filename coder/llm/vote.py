"""The LLM vote stage: a generative model reads each note with its best candidates and votes for codes.

``LLMStage`` is opened once per run (its backend loaded or reached once) and takes a batch's notes
and scored candidates; ``vote`` returns votes and counts, ``merge_votes`` folds the votes into the
candidates' scores. Every proposal is held to the assignable-code rule (``coder.validate``) twice:
the allowed set a prompt may produce holds only assignable codes, and each answer is judged again;
a proposal that fails counts as invented. The pipeline's validate stage then checks every row once more.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import polars as pl

from coder.errors import LLMBackendError, MissingDependencyError
from coder.llm.backends import Backend, Generation, Request, open_backend
from coder.llm.constrain import AllowedCodes, allowed_codes, ontology_codes
from coder.llm.prompt import chunk_note, messages
from coder.llm.redact import redact
from coder.llm.settings import LLMSettings
from coder.llm.validate import HallucinationCounts, sum_counts, validate_answer
from coder.schema import CODE, KEY, NOTE_ID, SCORE, SOURCE, SYSTEM, SYSTEMS, THRESHOLD
from coder.validate import AssignableCodes

logger = logging.getLogger(__name__)

LLM_SOURCE = "llm"
PREFIX = "llm."  # batch count keys of this stage
SHARE = "share"
VOTES_SCHEMA = pl.Schema({
    NOTE_ID: pl.String, SYSTEM: pl.String, CODE: pl.String,
    "votes": pl.Int32,  # prompts (chunks) of the note whose answer contained the code
    SHARE: pl.Float64,  # votes / prompts of the note, in (0, 1]
})
_COUNTS = tuple(f.name for f in fields(HallucinationCounts))


@dataclass(frozen=True)
class Votes:
    """A batch's votes per (note, system, code) and what happened to the model's proposals."""

    votes: pl.DataFrame
    counts: HallucinationCounts = field(default_factory=HallucinationCounts)
    new_tokens: int = 0
    seconds: float = 0.0
    """Time spent generating (summed over prompts)."""
    error: str | None = None
    """Why prompts failed (the first failure), without note text."""

    def batch_counts(self) -> dict[str, int | float]:
        """The ``llm.``-prefixed counts a batch adds to the run's totals."""
        counts = {**self.counts.to_dict(), "new_tokens": self.new_tokens, "generation_seconds": self.seconds}
        return {f"{PREFIX}{key}": value for key, value in counts.items()}


class LLMStage:
    """The stage for one run. If the backend cannot be opened, ``settings.required`` raises
    (``LLMBackendError``, exit 8); otherwise the stage is unavailable, votes nothing and ``error`` says why."""

    def __init__(self, settings: LLMSettings, *, gate: AssignableCodes, backend: Backend | None = None):
        self.settings = settings
        self.gate = gate
        self.error: str | None = None
        """Why the stage did not run, or the first prompt failure; no note text."""
        self.backend = backend if backend is not None else self._open()

    def _open(self) -> Backend | None:
        try:
            return open_backend(self.settings)
        except (LLMBackendError, MissingDependencyError) as error:
            message = redact(str(error))
            if self.settings.required:
                raise (LLMBackendError(message) if message != str(error) else error) from None
            logger.warning("LLM stage off for this run: %s", message)
            self.error = message
            return None

    def public_settings(self) -> dict[str, Any]:
        """Settings for the manifest and the resume fingerprint: credentials redacted, the API key only ever named."""
        url = self.settings.base_url
        return {**self.settings.to_dict(), "base_url": redact(url) if url else url}

    def vote(self, notes: pl.DataFrame, candidates: pl.DataFrame, *, text_column: str, per_note: int) -> Votes:
        """Votes of the model on ``notes`` (note_id, ``text_column``) given each note's best
        ``per_note`` candidates per system (scored: ``score``)."""
        if self.backend is None or candidates.is_empty():
            return Votes(votes=VOTES_SCHEMA.to_frame())
        best = candidates.sort([NOTE_ID, SYSTEM, SCORE], descending=[False, False, True]).group_by(
            NOTE_ID, SYSTEM, maintain_order=True).head(per_note)
        plans = self._plan(notes.select(NOTE_ID, text_column), best)
        requests = [request for plan in plans for request in plan.requests]
        generations = self.backend.generate(requests) if requests else []
        counts = [HallucinationCounts(notes=len(plans), notes_cut=sum(plan.cut for plan in plans))]
        rows = []
        answers = iter(generations)
        for plan in plans:
            tally: Counter[str] = Counter()
            for request, generation in zip(plan.requests, answers):
                codes, counted = self._judge(generation, request.allowed)
                tally.update(codes)
                counts.append(counted)
            for code, n in tally.items():
                rows.extend((plan.note_id, system, code, n, n / len(plan.requests)) for system in plan.allowed.systems_by_code[code])
        failed = [generation.error for generation in generations if generation.error]
        error = f"{len(failed)} of {len(requests)} prompts failed, first: {redact(failed[0])}" if failed else None
        if failed and self.settings.required:
            raise LLMBackendError(f"LLM stage required but {error}")
        self.error = self.error or error
        total = sum_counts(counts)
        logger.info("LLM stage: %s", total.to_dict())
        return Votes(votes=pl.DataFrame(rows, schema=VOTES_SCHEMA, orient="row"), counts=total, error=error,
                     new_tokens=sum(g.new_tokens for g in generations), seconds=sum(g.seconds for g in generations))

    def _judge(self, generation: Generation, allowed: AllowedCodes) -> tuple[tuple[str, ...], HallucinationCounts]:
        if generation.error:
            return (), HallucinationCounts(failed_prompts=1)
        validated = validate_answer(generation.text, allowed=allowed, ontology=self.gate.ontology, assignable=self.gate,
                                    fuzzy_threshold=self.settings.fuzzy_threshold, truncated=generation.truncated)
        return validated.codes, validated.counts + HallucinationCounts(prompts=1)

    def _plan(self, notes: pl.DataFrame, candidates: pl.DataFrame) -> list[_Plan]:
        """One plan per note that has candidates: its allowed set and one request per chunk of its text."""
        by_note = {key[0]: group for key, group in candidates.sort([NOTE_ID, SCORE], descending=[False, True],
                                                                   maintain_order=True).group_by(NOTE_ID, maintain_order=True)}
        whole = None
        plans = []
        for note_id, text in notes.iter_rows():
            group = by_note.get(note_id)
            if group is None or not text:
                continue
            if self.settings.scope == "ontology":  # the same for every note: built once per call
                whole = whole or ontology_codes(ontology=self.gate.ontology, systems=SYSTEMS, assignable=self.gate)
                allowed = whole
            else:
                allowed = allowed_codes(group.select(SYSTEM, CODE).iter_rows(), ontology=self.gate.ontology, assignable=self.gate)
            listed = list(dict.fromkeys(code for code in group[CODE] if code in allowed))[: self.settings.prompt_candidates]
            chunks = chunk_note(text, count_tokens=self.backend.count_tokens, chunk_tokens=self.settings.chunk_tokens,
                                budget=self.settings.note_token_budget)
            listing = [(code, allowed.descriptions.get(code, "")) for code in listed]
            requests = tuple(Request(messages=messages(chunk, candidates=listing, part=i, parts=len(chunks.texts)), allowed=allowed)
                             for i, chunk in enumerate(chunks.texts, start=1))
            plans.append(_Plan(note_id=note_id, allowed=allowed, requests=requests, cut=chunks.cut))
        return plans


@dataclass(frozen=True)
class _Plan:
    note_id: str
    allowed: AllowedCodes
    requests: tuple[Request, ...]
    cut: bool


def merge_votes(candidates: pl.DataFrame, votes: pl.DataFrame, *, weight: float) -> pl.DataFrame:
    """Raise voted candidates' scores; add voted codes that were not candidates.

    A voted row's score becomes ``score + weight * share * (1 - score)``: it stays in [0, 1] and
    moves toward 1 in proportion to the share of the note's prompts that proposed the code;
    ``weight=0`` changes nothing. ``source`` gets ``+llm``. A voted code that was no candidate (a
    parent, child or sibling) is added with score ``weight * share``, source ``llm`` and no
    threshold decision (never above threshold): the votes re-rank, the model's thresholds decide."""
    if votes.is_empty() or weight == 0.0:
        return candidates
    merged = candidates.join(votes.select(*KEY, SHARE), on=list(KEY), how="full", coalesce=True)
    hit, added, score = pl.col(SHARE).is_not_null(), pl.col(SCORE).is_null(), pl.col(SCORE).fill_null(0.0)
    return merged.with_columns(
        pl.when(hit).then(score + weight * pl.col(SHARE) * (1.0 - score)).otherwise(score).alias(SCORE),
        pl.when(added).then(pl.lit(LLM_SOURCE)).when(hit).then(pl.col(SOURCE) + f"+{LLM_SOURCE}")
        .otherwise(pl.col(SOURCE)).alias(SOURCE),
        pl.col(THRESHOLD).fill_null(float("inf")),
    ).drop(SHARE)


def manifest_section(stage: LLMStage | None, totals: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's ``llm`` section from the run's summed batch counts (the shape ``coder audit`` copies)."""
    if stage is None:
        return {"enabled": False, "available": False, "error": None, "settings": LLMSettings().to_dict()}
    counts = {name: int(totals.get(f"{PREFIX}{name}", 0)) for name in _COUNTS}
    # Unavailable: never opened, or every prompt of the run failed.
    available = stage.backend is not None and not (counts["failed_prompts"] and not counts["prompts"])
    return {
        "enabled": True,
        "available": available,
        "error": stage.error,
        "settings": stage.public_settings(),
        "counts": counts,
        "rejected": counts["rejected_unknown"] + counts["rejected_not_allowed"] + counts["rejected_text"],
        "new_tokens": int(totals.get(f"{PREFIX}new_tokens", 0)),
        "generation_seconds": round(float(totals.get(f"{PREFIX}generation_seconds", 0.0)), 3),
    }


def summary_line(section: Mapping[str, Any]) -> str | None:
    """One line for a person about the LLM stage, or None when it was off."""
    if not section.get("enabled"):
        return None
    if not section["available"]:
        return f"LLM stage unavailable, predictions are the model's alone: {section['error']}"
    counts = section["counts"]
    return (
        f"LLM stage: {counts['notes']} notes, {counts['proposals']} proposals, {counts['accepted']} accepted, "
        f"{section['rejected']} rejected ({counts['rejected_unknown']} invented codes, "
        f"{counts['rejected_not_allowed']} outside the candidates, {counts['rejected_text']} unmatched text)"
    )


def llm_settings(*, configured: Mapping[str, Any] | None, given: Mapping[str, Any]) -> LLMSettings:
    """The run's settings: the model config's ``llm`` entry, overridden field by field by ``given``
    (``LLMSettings`` field names)."""
    return LLMSettings.from_mapping({**(configured or {}), **given})
