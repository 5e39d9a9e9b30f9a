"""The stage's entry point: notes and their candidates in, validated votes and counts out."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import polars as pl

from coder.errors import LLMBackendError, MissingDependencyError
from coder.llm.backends import Backend, Generation, Request, open_backend
from coder.llm.constrain import AllowedCodes, Ontology, allowed_codes, ontology_codes
from coder.llm.merge import DESCRIPTION, VOTES_SCHEMA
from coder.llm.prompt import chunk_note, messages
from coder.llm.settings import LLMSettings
from coder.llm.validate import HallucinationCounts, sum_counts, validate_answer
from coder.schema import CODE, NOTE_ID, SYSTEM, SYSTEMS, TEXT

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LLMStageResult:
    """Votes per (note, system, code) and what happened. ``available`` is false when the stage was off
    (``error`` None) or its backend failed (``error`` says why, without note text)."""

    votes: pl.DataFrame
    counts: HallucinationCounts = field(default_factory=HallucinationCounts)
    available: bool = False
    error: str | None = None
    new_tokens: int = 0
    seconds: float = 0.0
    """Time spent generating (summed over prompts)."""

    def manifest(self) -> dict:
        """What the run manifest records about the stage."""
        return {
            "available": self.available,
            "error": self.error,
            "counts": self.counts.to_dict(),
            "new_tokens": self.new_tokens,
            "generation_seconds": round(self.seconds, 3),
        }


def _skipped(error: str | None) -> LLMStageResult:
    return LLMStageResult(votes=VOTES_SCHEMA.to_frame(), available=False, error=error)


def run_llm_stage(
    notes: pl.DataFrame,
    candidates: pl.DataFrame,
    *,
    settings: LLMSettings,
    ontology: Ontology,
    backend: Backend | None = None,
) -> LLMStageResult:
    """Ask the model which codes each note supports, within the allowed set, and count every outcome.

    ``notes``: (note_id, text). ``candidates``: PREDICTION_SCHEMA rows (at least note_id, system, code,
    score). ``backend``: reuse an opened backend across batches (default: open one from ``settings``).
    A backend that cannot be opened (missing package, model or server), or that fails every prompt,
    gives ``available=False`` and an ``error``; with ``settings.required`` it raises instead
    (``LLMBackendError``, or ``MissingDependencyError`` with the pip command).
    """
    if not settings.enabled:
        return _skipped(None)
    if backend is None:
        try:
            backend = open_backend(settings)
        except (LLMBackendError, MissingDependencyError) as error:
            if settings.required:
                raise
            logger.warning("LLM stage skipped: %s", error)
            return _skipped(str(error))

    plans = _plan(notes, candidates, settings=settings, ontology=ontology, backend=backend)
    requests = [request for plan in plans for request in plan.requests]
    generations = backend.generate(requests) if requests else []

    counts = [HallucinationCounts(notes=len(plans), notes_cut=sum(plan.cut for plan in plans))]
    rows = []
    answers = iter(generations)
    for plan in plans:
        votes: Counter[str] = Counter()
        for request, generation in zip(plan.requests, answers):
            validated, counted = _judge(generation, request.allowed, settings=settings, ontology=ontology)
            votes.update(validated)
            counts.append(counted)
        for code, n in votes.items():
            for system in plan.allowed.systems_by_code[code]:
                share = n / len(plan.requests)
                rows.append((plan.note_id, system, code, plan.allowed.descriptions.get(code), n, share))

    total = sum_counts(counts)
    failed = [generation.error for generation in generations if generation.error]
    result = LLMStageResult(
        votes=pl.DataFrame(rows, schema=VOTES_SCHEMA, orient="row"),
        counts=total,
        available=not requests or len(failed) < len(requests),
        error=f"{len(failed)} of {len(requests)} prompts failed, first: {failed[0]}" if failed else None,
        new_tokens=sum(generation.new_tokens for generation in generations),
        seconds=sum(generation.seconds for generation in generations),
    )
    if failed and settings.required:
        raise LLMBackendError(f"LLM stage required but {result.error}")
    logger.info("LLM stage: %s", total.to_dict())
    return result


def _judge(
    generation: Generation, allowed: AllowedCodes, *, settings: LLMSettings, ontology: Ontology
) -> tuple[tuple[str, ...], HallucinationCounts]:
    if generation.error:
        return (), HallucinationCounts(failed_prompts=1)
    validated = validate_answer(
        generation.text,
        allowed=allowed,
        ontology=ontology,
        fuzzy_threshold=settings.fuzzy_threshold,
        truncated=generation.truncated,
    )
    return validated.codes, validated.counts + HallucinationCounts(prompts=1)


@dataclass(frozen=True)
class _Plan:
    note_id: str
    allowed: AllowedCodes
    requests: tuple[Request, ...]
    cut: bool


def _plan(
    notes: pl.DataFrame, candidates: pl.DataFrame, *, settings: LLMSettings, ontology: Ontology, backend: Backend
) -> list[_Plan]:
    """One plan per note that has candidates: its allowed set and one request per chunk."""
    ranked = candidates.sort([NOTE_ID, "score"], descending=[False, True], maintain_order=True)
    by_note = {key[0]: group for key, group in ranked.group_by(NOTE_ID, maintain_order=True)}
    whole_ontology = None
    plans = []
    for note_id, text in notes.select(NOTE_ID, TEXT).iter_rows():
        group = by_note.get(note_id)
        if group is None or not text:
            continue
        if settings.scope == "ontology":
            # The same for every note: built once per call.
            whole_ontology = whole_ontology or ontology_codes(ontology=ontology, systems=SYSTEMS)
            allowed = whole_ontology
        else:
            allowed = allowed_codes(group.select(SYSTEM, CODE).iter_rows(), ontology=ontology)
        listed = _prompt_candidates(group, allowed, limit=settings.prompt_candidates)
        chunks = chunk_note(
            text,
            count_tokens=backend.count_tokens,
            chunk_tokens=settings.chunk_tokens,
            budget=settings.note_token_budget,
        )
        requests = tuple(
            Request(messages=messages(chunk, candidates=listed, part=i, parts=len(chunks.texts)), allowed=allowed)
            for i, chunk in enumerate(chunks.texts, start=1)
        )
        plans.append(_Plan(note_id=note_id, allowed=allowed, requests=requests, cut=chunks.cut))
    return plans


def _prompt_candidates(group: pl.DataFrame, allowed: AllowedCodes, *, limit: int) -> list[tuple[str, str]]:
    """The note's best candidates, unique, with the description the model reads."""
    listed: dict[str, str] = {}
    described = DESCRIPTION in group.columns
    for row in group.iter_rows(named=True):
        code = row[CODE]
        if code not in listed:
            listed[code] = (row[DESCRIPTION] if described else None) or allowed.descriptions.get(code, "")
        if len(listed) == limit:
            break
    return list(listed.items())

