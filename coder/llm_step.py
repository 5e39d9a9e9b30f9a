"""The pipeline's optional LLM step: a predictor wrapper that lets a generative model vote on each batch's codes.

``LLMVoting`` has the Predictor's ``predict`` and attributes, so the pipeline's engines need no change:
score the batch, ``run_llm_stage`` on its notes and candidates, ``merge_llm_votes``, cut to ``top_k`` again.
The backend is opened once per run; the stage's counts travel with each batch's counts (``llm.`` keys),
so a resumed run reports them for all its batches.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import polars as pl

from coder.errors import LLMBackendError, MissingDependencyError
from coder.llm import HallucinationCounts, LLMSettings, merge_llm_votes, run_llm_stage
from coder.llm.backends import Backend, open_backend
from coder.schema import NOTE_ID, SYSTEM, TEXT

log = logging.getLogger(__name__)

PREFIX = "llm."
_COUNTS = tuple(f.name for f in dataclasses.fields(HallucinationCounts))


def given_llm_settings(**values: Any) -> dict[str, Any]:
    """The LLM settings a user gave (``LLMSettings`` field names); None means not given."""
    return {name: value for name, value in values.items() if value is not None}


def resolve_llm_settings(*, configured: Mapping[str, Any] | None, given: Mapping[str, Any]) -> LLMSettings:
    """The run's settings: the model config's ``llm`` entry, overridden field by field by ``given``."""
    return LLMSettings.from_mapping({**(configured or {}), **given})


def public_settings(settings: LLMSettings) -> dict[str, Any]:
    """Settings for the manifest: no secrets (the API key is only ever named; credentials in the URL are dropped)."""
    return {**settings.to_dict(), "base_url": public_url(settings.base_url)}


def public_url(url: str | None) -> str | None:
    parts = urlsplit(url or "")
    if not (parts.username or parts.password):
        return url
    host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    return urlunsplit(parts._replace(netloc=host))


class LLMVoting:
    """A ``BatchPredictor`` whose predictions the LLM stage has voted on.

    Opening the backend fails -> with ``settings.required`` the error is raised (``LLMBackendError``, exit 8),
    otherwise batches pass through unscored by the LLM and ``error`` says why.
    """

    def __init__(self, predictor: Any, *, settings: LLMSettings, ontology: Any, backend: Backend | None = None):
        self.predictor = predictor
        self.settings = settings
        self.ontology = ontology
        self.text_columns: tuple[str, ...] = predictor.text_columns
        self.execution_provider: str = predictor.execution_provider
        self.precision: str = predictor.precision
        self.model_hash: str = predictor.model_hash
        self.error: str | None = None
        """Why the stage did not run (or the first prompt failure); no note text."""
        self.backend = backend if backend is not None else self._open()

    def _open(self) -> Backend | None:
        try:
            return open_backend(self.settings)
        except (LLMBackendError, MissingDependencyError) as error:
            message = self._redacted(str(error))
            if self.settings.required:
                if message != str(error):
                    raise LLMBackendError(message) from None
                raise
            log.warning("LLM stage off for this run: %s", message)
            self.error = message
            return None

    def _redacted(self, message: str) -> str:
        """``message`` without the credentials of ``--llm-base-url`` (backend errors name the URL)."""
        url = self.settings.base_url
        return message.replace(url, public_url(url) or "") if url else message

    def public_settings(self) -> dict[str, Any]:
        return public_settings(self.settings)

    def predict(self, batch: pl.DataFrame, *, top_k: int = 50, threshold_only: bool = False) -> Any:
        from coder.pipeline import ScoredBatch  # the pipeline imports this module

        result = self.predictor.predict(batch, top_k=top_k, threshold_only=threshold_only)
        if self.backend is None or result.predictions.is_empty():
            return result
        notes = batch.select(NOTE_ID, pl.col(self.text_columns[0]).alias(TEXT))
        stage = run_llm_stage(
            notes, result.predictions, settings=self.settings, ontology=self.ontology, backend=self.backend
        )
        self.error = self.error or (stage.error and self._redacted(stage.error))
        voted = merge_llm_votes(result.predictions, stage.votes, weight=self.settings.weight)
        if threshold_only:  # codes the model added have no threshold decision (above_threshold False)
            voted = voted.filter(pl.col("above_threshold"))
        # Added codes can push a (note, system) past top_k: renumber (rows are in rank order) and cut.
        voted = voted.with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(NOTE_ID, SYSTEM).alias("rank"))
        counts = {**stage.counts.to_dict(), "new_tokens": stage.new_tokens, "generation_seconds": stage.seconds}
        return ScoredBatch(
            predictions=voted.filter(pl.col("rank") <= top_k),
            truncated=result.truncated,
            unprocessable=result.unprocessable,
            llm_counts={f"{PREFIX}{key}": value for key, value in counts.items()},
        )


def llm_manifest(predictor: Any, totals: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's ``llm`` section from the run's summed batch counts (the shape ``coder audit`` copies)."""
    if not isinstance(predictor, LLMVoting):
        return {"enabled": False, "available": False, "error": None, "settings": public_settings(LLMSettings())}
    counts = {name: int(totals.get(f"{PREFIX}{name}", 0)) for name in _COUNTS}
    # Unavailable: never opened, or every prompt of the run failed.
    available = predictor.backend is not None and not (counts["failed_prompts"] and not counts["prompts"])
    return {
        "enabled": True,
        "available": available,
        "error": predictor.error,
        "settings": predictor.public_settings(),
        "counts": counts,
        "rejected": rejected(counts),
        "new_tokens": int(totals.get(f"{PREFIX}new_tokens", 0)),
        "generation_seconds": round(float(totals.get(f"{PREFIX}generation_seconds", 0.0)), 3),
    }


def rejected(counts: Mapping[str, int]) -> int:
    """Proposals the stage refused: invented codes, codes outside the allowed set, unmatched text."""
    return counts["rejected_unknown"] + counts["rejected_not_allowed"] + counts["rejected_text"]


def llm_summary_line(section: Mapping[str, Any]) -> str | None:
    """One line for a person about the LLM stage, or None when it was off."""
    if not section.get("enabled"):
        return None
    if not section["available"]:
        return f"LLM stage unavailable, predictions are the model's alone: {section['error']}"
    counts = section["counts"]
    return (
        f"LLM stage: {counts['notes']} notes, {counts['proposals']} proposals, {counts['accepted']} accepted, "
        f"{section['rejected']} rejected ({counts['rejected_unknown']} unknown codes, "
        f"{counts['rejected_not_allowed']} outside the candidates, {counts['rejected_text']} unmatched text)"
    )
