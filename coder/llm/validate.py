"""Post-validation of every proposal, constrained or not, and the per-run hallucination counts."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass

from rapidfuzz import fuzz, process, utils

from coder.errors import CodeFormatError
from coder.llm.constrain import AllowedCodes, Assignable, OntologyView

# Code-shaped: 3-7 upper-case letters/digits with at least one digit, optionally a dot and up to four more
# (ICD-10-CM ``E11.9``, ICD-10-PCS ``0DTJ4ZZ``, invented ``ZZZ.999``). Words, even upper-case ones like
# ``COPD``, are left to the description matcher.
_CODE_LIKE = re.compile(r"\b(?=[A-Z0-9.]*[0-9])[A-Z0-9]{3,7}(?:\.[A-Z0-9]{1,4})?\b")
_SPLIT = re.compile(r"[\n;]+")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")


@dataclass(frozen=True)
class HallucinationCounts:
    """What happened to the model's proposals in a run. Sum batches with ``+``; ``to_dict`` for the manifest."""

    notes: int = 0
    """Notes sent to the model."""
    prompts: int = 0
    """Prompts answered (a long note is several chunks)."""
    failed_prompts: int = 0
    """Prompts the backend could not answer (timeouts, HTTP errors)."""
    proposals: int = 0
    """Non-empty items the model wrote (codes or text)."""
    accepted: int = 0
    """Proposals that are known codes inside the allowed set (including those mapped from text)."""
    rejected_unknown: int = 0
    """Code-shaped proposals that are no assignable code (``coder.validate``): invented codes."""
    rejected_not_allowed: int = 0
    """Known codes outside the allowed set."""
    mapped_from_text: int = 0
    """Free-text proposals mapped to an allowed code by description similarity."""
    rejected_text: int = 0
    """Free-text proposals that matched no allowed description well enough."""
    duplicates: int = 0
    """Accepted codes proposed again in the same answer."""
    truncated: int = 0
    """Answers cut at ``max_new_tokens`` (their last, possibly partial, item is dropped)."""
    notes_cut: int = 0
    """Notes longer than ``note_token_budget`` (text beyond it not read)."""

    def __add__(self, other: HallucinationCounts) -> HallucinationCounts:
        if not isinstance(other, HallucinationCounts):
            return NotImplemented
        return HallucinationCounts(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)}
        )

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Validated:
    """The accepted codes of one answer, in the order written, and what happened to each proposal."""

    codes: tuple[str, ...]
    counts: HallucinationCounts


def split_answer(text: str, *, truncated: bool) -> list[str]:
    """Items of a model answer (one per line or semicolon separated), bullets stripped.

    A truncated answer loses its last item: it may be a code cut in half that happens to be valid (``E11``).
    """
    items = [_BULLET.sub("", item).strip(" \t,") for item in _SPLIT.split(text)]
    if truncated and items:
        items = items[:-1]
    return [item for item in items if item]


def validate_answer(
    text: str,
    *,
    allowed: AllowedCodes,
    ontology: OntologyView,
    assignable: Assignable,
    fuzzy_threshold: float,
    truncated: bool = False,
) -> Validated:
    """Normalise each item, look it up, keep what is a known code inside ``allowed``.

    Each code-shaped token of an item is a proposal judged by the ontology (unknown or not
    assignable: invented; outside ``allowed``: not allowed; else accepted), so ``E11.9, I10`` is two; an item without one is a description, matched against the
    allowed codes' descriptions with rapidfuzz ``token_sort_ratio`` (lower-cased, punctuation dropped,
    word order ignored, missing words penalised) and kept only at or above ``fuzzy_threshold``.
    """
    tally = dict.fromkeys((f.name for f in dataclasses.fields(HallucinationCounts)), 0)
    tally["truncated"] = int(truncated)
    accepted: list[str] = []
    judged = []
    for item in split_answer(text, truncated=truncated):
        tokens = _CODE_LIKE.findall(item)
        if tokens:
            judged.extend(_judge_code(token, allowed=allowed, ontology=ontology, assignable=assignable) for token in tokens)
        else:
            judged.append(_map_text(item, allowed=allowed, threshold=fuzzy_threshold))
    for code, outcome in judged:
        tally["proposals"] += 1
        if outcome is not None:
            tally[outcome] += 1
        if code is None:
            continue
        tally["accepted"] += 1
        if code in accepted:
            tally["duplicates"] += 1
        else:
            accepted.append(code)
    return Validated(codes=tuple(accepted), counts=HallucinationCounts(**tally))


def _judge_code(token: str, *, allowed: AllowedCodes, ontology: OntologyView, assignable: Assignable) -> tuple[str | None, str | None]:
    try:
        info = ontology.lookup(token)
    except CodeFormatError:
        return None, "rejected_unknown"
    if info.status == "unknown" or not assignable(info.canonical, info.system):
        return None, "rejected_unknown"
    if info.canonical not in allowed:
        return None, "rejected_not_allowed"
    return info.canonical, None


def _map_text(item: str, *, allowed: AllowedCodes, threshold: float) -> tuple[str | None, str]:
    if not allowed.descriptions:
        return None, "rejected_text"
    codes = list(allowed.descriptions)
    best = process.extractOne(
        item, [allowed.descriptions[code] for code in codes], scorer=fuzz.token_sort_ratio, processor=utils.default_process
    )
    if best is None or best[1] < threshold:
        return None, "rejected_text"
    return codes[best[2]], "mapped_from_text"


def sum_counts(counts: Iterable[HallucinationCounts]) -> HallucinationCounts:
    return sum(counts, HallucinationCounts())
