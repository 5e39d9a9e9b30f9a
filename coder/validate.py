"""The one gate: only assignable codes reach the output.

A code may be written when it is
- a billable or valid (non-leaf) item of the release (ICD-10-CM FY2026, ICD-10-PCS FY2024), or
- vouched for by the code list in force (the model's ``codes.tsv`` or ``--codes-file``), or
- a truncation of real codes at a length the model's own labels use (a model trained on CodiEsp's
  4-character PCS codes may write 4-character PCS codes; one trained on full codes may not).
Any other string, other prefixes of real codes included (``10E0XZ``, ``BW21Z``, ``B``), is not a
code. The pipeline's validate stage applies this to every candidate of every source once, just
before ranking; the LLM stage uses the same rule to build and judge what it may propose.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import polars as pl

from coder.ontology import Ontology
from coder.ontology.sources import PREFIX
from coder.schema import CODE, SYSTEM, VALIDITY

RELEASE, CODE_LIST = "release", "code_list"


@dataclass(frozen=True, eq=False)
class AssignableCodes:
    """The assignable-code rule for one ontology (release + code list) and one model's truncation levels."""

    ontology: Ontology
    truncations: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    """System -> code lengths (without dots) at which a truncation of real codes is assignable."""
    _memo: dict[tuple[str, str], tuple[bool, str]] = field(default_factory=dict, repr=False)

    def __call__(self, code: str, system: str) -> bool:
        """Whether ``code`` may be written as a code of ``system``."""
        return self._verdict(code, system)[0]

    def origin(self, code: str, system: str) -> str:
        """Where an assignable code's validity comes from: ``release`` or ``code_list`` (the list alone)."""
        return self._verdict(code, system)[1]

    def _verdict(self, code: str, system: str) -> tuple[bool, str]:
        """(assignable, origin) of ``code`` from one ontology lookup, kept: the same codes come back in every batch."""
        key = (code, system)
        if key not in self._memo:
            info = self.ontology.lookup(code, system)
            if info.status == PREFIX:
                assignable = len(info.canonical.replace(".", "")) in self.truncations.get(system, ())
            else:
                assignable = info.status != "unknown"
            listed = getattr(self.ontology, "listed", frozenset())
            self._memo[key] = (assignable, CODE_LIST if (system, info.canonical) in listed else RELEASE)
        return self._memo[key]

    def validate(self, candidates: pl.DataFrame) -> pl.DataFrame:
        """The rows of ``candidates`` (with ``system`` and ``code``) whose code is assignable, with
        ``validity`` (``origin``)."""
        pairs = candidates.select(SYSTEM, CODE).unique()
        allowed = pairs.filter(pl.Series([self(code, system) for system, code in pairs.iter_rows()], dtype=pl.Boolean))
        origins = allowed.with_columns(pl.Series(VALIDITY, [self.origin(code, system) for system, code in allowed.iter_rows()],
                                                 dtype=pl.String))
        return candidates.join(origins, on=[SYSTEM, CODE], how="inner", maintain_order="left")


def truncation_levels(codes: Iterable[tuple[str, str]], *, ontology: Ontology) -> dict[str, tuple[int, ...]]:
    """System -> lengths (without dots) of the (system, code) pairs that are truncations (status
    ``prefix``) in ``ontology``: the truncation levels a model trained on ``codes`` may write."""
    levels: dict[str, set[int]] = {}
    for system, code in codes:
        info = ontology.lookup(code, system)
        if info.status == PREFIX:
            levels.setdefault(system, set()).add(len(info.canonical.replace(".", "")))
    return {system: tuple(sorted(lengths)) for system, lengths in sorted(levels.items())}
