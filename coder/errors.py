"""Errors raised by coder. The CLI turns each into one stderr line and an exit code.

Every error coder raises for a problem the user can fix is a ``CoderError``: the CLI and the Python
API (``coder.load_model``, ``CodingModel.predict``, ``coder.audit``) raise the same subclasses, so
``except coder.errors.CoderError`` catches them all and ``error.exit_code`` is the CLI's exit code.
Messages name files, rows, columns and note ids, never note text (it is patient data).
"""

from __future__ import annotations


class CoderError(Exception):
    """Base class: a problem the user can fix. ``exit_code`` is what the CLI returns."""

    exit_code = 1


class UsageError(CoderError):
    """Options that contradict each other or a value out of range."""

    exit_code = 2


class InputFileError(CoderError):
    """An input file is missing, unreadable, not parquet, truncated, lacks a needed column, or changed during the run."""

    exit_code = 3


class CodeFormatError(CoderError, ValueError):
    """A string cannot be read as an ICD-10 code; ``reason`` says why."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"cannot read {code!r} as an ICD-10 code: {reason}")
        self.code = code
        self.reason = reason


class OntologyError(CoderError):
    """The ontology source or cache, or a user code list, is unusable."""

    exit_code = 4


class ModelBundleError(CoderError):
    """A model folder is incomplete or inconsistent (labels vs ONNX width, versions, hashes)."""

    exit_code = 5


class ExportParityError(CoderError):
    """ONNX outputs differ from torch beyond the stated tolerance."""

    exit_code = 6


class MissingDependencyError(CoderError):
    """An optional dependency is not installed; the message carries the exact pip command."""

    exit_code = 7

    def __init__(self, package: str, purpose: str):
        super().__init__(f"{purpose} needs {package}: pip install {package}")


class NotFittedError(CoderError, AttributeError):
    """An estimator was used before ``fit``."""


class LLMBackendError(CoderError):
    """The generative stage's model cannot be loaded or its server cannot be reached (raised only when required)."""

    exit_code = 8


class RunIOError(CoderError, OSError):
    """A file coder writes cannot be written (disk full, permission denied, a folder gone); what was
    already written stays, so ``--resume`` goes on once the cause is fixed. An ``OSError`` too, so a
    caller that may go on without the file (a cache) still catches it."""

    exit_code = 9


class WorkerError(CoderError):
    """A CoderError raised on a worker of a distributed engine (Ray), carried back with its message and exit code."""

    def __init__(self, message: str, *, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
