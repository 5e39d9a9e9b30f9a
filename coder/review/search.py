"""Codes a reviewer may add, found as they type: by code (any spelling, a prefix of it) or by the words
of the description (each typed word starts a word of it). Only assignable codes are offered
(``coder.validate.AssignableCodes``: the release's codes, the code list's, and truncations at the
model's lengths, such as CodiEsp's 4-character PCS codes)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

from coder.auditing.keys import KEY, code_key
from coder.schema import CODE, DESCRIPTION, SYSTEM, SYSTEMS
from coder.validate import AssignableCodes

STATUS = "status"
_WORDS = re.compile(r"\w+")
_FOLDED = "folded"


@dataclass(frozen=True)
class CodeSearch:
    """Every assignable code with its status and description, searched by ``find``."""

    gate: AssignableCodes
    codes: pl.DataFrame
    """system, code, status, description, key (``coder.auditing.keys``), folded (the description, lower case)."""

    @classmethod
    def build(cls, gate: AssignableCodes) -> CodeSearch:
        ontology, rows = gate.ontology, []
        for system in SYSTEMS:
            full = ontology.codes(system)
            truncated = {code.replace(".", "")[:level] for level in gate.truncations.get(system, ()) for code in full}
            for code in (*full, *sorted(truncated)):
                info = ontology.lookup(code, system)
                if info.canonical is not None and gate(info.canonical, system):
                    rows.append((system, info.canonical, info.status, info.description))
        codes = pl.DataFrame(rows, schema=[SYSTEM, CODE, STATUS, DESCRIPTION], orient="row").unique([SYSTEM, CODE],
                                                                                                     maintain_order=True)
        return cls(gate=gate, codes=codes.with_columns(code_key(), pl.col(DESCRIPTION).str.to_lowercase().alias(_FOLDED)))

    def find(self, query: str, *, system: str | None = None, limit: int = 20) -> list[dict]:
        """Up to ``limit`` codes for ``query``: those whose code starts with it first (shortest first), then
        those whose description has a word starting with each of its words (shortest description first)."""
        words = _WORDS.findall(query.lower())
        if not words:
            return []
        scope = self.codes if system is None else self.codes.filter(pl.col(SYSTEM) == system)
        typed = re.sub(r"[.\s]", "", query.upper())
        by_code = scope.filter(pl.col(KEY).str.starts_with(typed)).sort(pl.col(KEY).str.len_chars(), KEY)
        by_words = scope.filter(*(pl.col(_FOLDED).str.contains(rf"\b{re.escape(word)}") for word in words))
        found = pl.concat([by_code.head(limit), by_words.sort(pl.col(DESCRIPTION).str.len_chars()).head(limit)])
        return found.unique([SYSTEM, CODE], maintain_order=True).head(limit).select(SYSTEM, CODE, STATUS, DESCRIPTION).to_dicts()
