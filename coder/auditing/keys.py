"""How an audit compares codes: by a key, upper-cased with dots and spaces removed ("N44.8", "n448"
and "N448" match; an ICD-10 dot only ever sits after the third character, so nothing is lost)."""

from __future__ import annotations

import polars as pl

from coder.schema import CODE

KEY = "key"


def code_key(column: str = CODE) -> pl.Expr:
    """Comparison key of a code column."""
    return pl.col(column).str.to_uppercase().str.replace_all(r"[.\s]", "").alias(KEY)
