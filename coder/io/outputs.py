"""The files a run writes: checked before any work, and owned by one run at a time.

``claim_outputs`` is the entry of every ``coder predict`` run: the predictions, the quarantine, the
manifest, the parts folder and the lock must be distinct from each other and from every input (an
output inside an input folder would be read by the next run), and each folder must exist and take a
new file. Then the run holds ``OUT.parquet.lock`` (``fcntl.flock``, so a killed run lets go of it)
until it ends, and a second run on the same output stops at once, naming the holder.

The lock file is the one file not written through ``coder.io.atomic``: renaming a new file over it
would leave the lock on the old one. It records the holder's pid, host and start time, and is
removed when the run ends; one left by a killed run is taken over, with a warning.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from coder.errors import UsageError
from coder.io.manifest import manifest_path
from coder.io.parts import parts_path
from coder.io.read import resolve_inputs
from coder.io.screen import quarantine_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutputs:
    """Every path a run writes, absolute."""

    predictions: Path
    quarantine: Path
    manifest: Path
    parts: Path
    lock: Path

    @classmethod
    def beside(cls, out: Path, *, quarantine: Path | None = None) -> RunOutputs:
        """``OUT.parquet`` and what goes beside it; ``quarantine`` (``--quarantine``) may be elsewhere."""
        out = out.absolute()
        return cls(out, (quarantine or quarantine_path(out)).absolute(), manifest_path(out), parts_path(out),
                   out.with_name(f"{out.name}.lock"))


_ROLES = {"predictions": "the predictions (--out)", "quarantine": "the quarantine (--quarantine)",
          "manifest": "the manifest", "parts": "the parts folder", "lock": "the lock file"}


def _resolved(path: Path) -> Path:
    """``path`` with symbolic links followed; a link loop is a UsageError naming it."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # RuntimeError: Python before 3.13 on a loop
        raise UsageError(f"{path}: a symbolic link loop; fix the link or give another path") from None


def _overlap(a: Path, b: Path) -> bool:
    """The same path, or one inside the other (symbolic links followed)."""
    a, b = _resolved(a), _resolved(b)
    return a == b or a in b.parents or b in a.parents


def check_outputs(outputs: RunOutputs, *, source: str | Path) -> None:
    """UsageError (one line) unless every output of the run can be written without overwriting another
    output or an input: checked before the model loads, so a mistake costs seconds, not a night."""
    named = [(_ROLES[f.name], path) for f, path in zip(fields(outputs), astuple(outputs), strict=True)]
    inputs = [("an input file", path) for path in resolve_inputs(source).files]
    if Path(source).is_dir():
        inputs.append(("the input folder", Path(source)))
    for i, (role, path) in enumerate(named):
        for other, other_path in [*named[i + 1:], *inputs]:
            if _overlap(path, other_path):
                raise UsageError(f"{path}: {role} would overwrite or sit inside {other} {other_path}; "
                                 "give --out and --quarantine paths of their own, outside the input")
    for role, path in named:
        folder = path == outputs.parts
        if path.exists() and path.is_dir() != folder:
            raise UsageError(f"{path}: {role} must be a {'folder' if folder else 'file'}, and something else is there")
    for folder, role in {path.parent: role for role, path in reversed(named)}.items():
        if not folder.is_dir():
            raise UsageError(f"{folder}: not an existing folder, so {role} cannot go there; create it first")
        try:  # permissions alone do not say it (root, read-only mounts, ACLs): try it
            descriptor, probe = tempfile.mkstemp(dir=folder, prefix=".coder-probe-")
            os.close(descriptor)
            os.unlink(probe)
        except OSError as error:
            raise UsageError(f"{folder}: cannot write {role} there ({error.strerror or error})") from None


def _holder(descriptor: int) -> dict[str, str]:
    """What a lock file says of its holder: empty if the file is, ``{"pid": "?"}`` if it holds no record."""
    text = os.pread(descriptor, 4096, 0)
    try:
        record = json.loads(text) if text else {}
    except ValueError:
        record = None
    return record if isinstance(record, dict) else {"pid": "?"}


def _described(holder: dict[str, str]) -> str:
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"


def _is_open(path: Path, descriptor: int) -> bool:
    """``path`` is still the file ``descriptor`` has open (not removed, or replaced by another run's)."""
    try:
        return os.stat(path).st_ino == os.fstat(descriptor).st_ino
    except FileNotFoundError:
        return False


def _lock(path: Path) -> int:
    """An open descriptor of ``path`` holding its exclusive lock; UsageError if another run holds it."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _holder(descriptor)
            os.close(descriptor)
            if isinstance(error, BlockingIOError):
                raise UsageError(f"{path}: another run is writing this output ({_described(holder)}); "
                                 "wait for it to end or stop it, then run again") from None
            raise UsageError(f"{path}: cannot lock the output ({error.strerror or error})") from None
        if _is_open(path, descriptor):
            return descriptor
        os.close(descriptor)  # the holder removed the file while we opened it: lock the new one


@contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """Hold ``path`` for the run: released (and removed) at the end and on any error."""
    descriptor = _lock(path)
    try:
        if previous := _holder(descriptor):
            log.warning("%s: taking over the lock of a run that ended without releasing it (%s)", path, _described(previous))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now(UTC).isoformat(timespec="seconds")}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(record).encode(), 0)
        os.fsync(descriptor)
        yield
    finally:
        if _is_open(path, descriptor):  # removed before the lock goes, so a run that opened it tries again (``_lock``)
            path.unlink()
        os.close(descriptor)


@contextmanager
def claim_outputs(source: str | Path, *, out: Path, quarantine: Path | None = None) -> Iterator[RunOutputs]:
    """The outputs of a run on ``source``, checked (``check_outputs``) and locked for as long as the run lasts."""
    outputs = RunOutputs.beside(out, quarantine=quarantine)
    check_outputs(outputs, source=source)
    with run_lock(outputs.lock):
        yield outputs
