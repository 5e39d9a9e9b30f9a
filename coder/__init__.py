"""coder: ICD-10-CM / ICD-10-PCS clinical coding for nightly note dumps.

Python API (``coder.api``): ``coder.load_model(path=None).predict(notes)`` and ``coder.audit(...)``.
"""

from __future__ import annotations

from typing import Any

from coder.version import __version__

__all__ = ["__version__", "audit", "load_model"]


def __getattr__(name: str) -> Any:
    """``load_model`` and ``audit`` come from ``coder.api`` on first use: ``import coder`` stays light."""
    if name in ("load_model", "audit"):
        from coder import api

        return getattr(api, name)
    raise AttributeError(f"module 'coder' has no attribute {name!r}")
