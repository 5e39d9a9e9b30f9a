"""The one atomic writer: a reader sees the old file or the new one, never half of one.

Every file coder writes (outputs, parts, markers, manifests, model configs, caches) goes
through ``write_atomically``: the bytes go to a temporary file beside the target, which is
flushed and fsynced, renamed over the target, and the folder is fsynced, so that a power cut
after the call returns cannot leave an empty or truncated file under the final name. A write the
system refuses (disk full, permission denied, a folder gone) is a ``RunIOError`` naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from coder.errors import RunIOError


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: Path, write: Callable[[IO[bytes]], None], *, durable: bool = True) -> None:
    """Write ``path`` with ``write(handle)``; with ``durable``, fsync the file and its folder.

    The temporary file is removed when ``write`` fails, so a failed write leaves the old file; an
    ``OSError`` (``ENOSPC``, ``EACCES``, ...) becomes a ``RunIOError``."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            with open(temporary, "wb") as handle:
                write(handle)
                handle.flush()
                if durable:
                    os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        if durable:
            fsync_folder(path.parent)
    except OSError as error:
        raise RunIOError(f"{path}: cannot write it ({error.strerror or type(error).__name__}); "
                         "free space or fix the folder's permissions, then rerun with --resume") from None


def write_text(path: Path, text: str, *, durable: bool = True) -> None:
    write_atomically(path, lambda handle: handle.write(text.encode("utf-8")), durable=durable)


def write_json(path: Path, content: Mapping[str, Any] | list, *, durable: bool = True) -> None:
    """Indented JSON (``default=str`` for paths and dates), newline-terminated."""
    write_text(path, json.dumps(content, indent=2, ensure_ascii=False, default=str) + "\n", durable=durable)


def write_parquet(path: Path, data: pl.DataFrame | pa.Table, *, durable: bool = True, **options: Any) -> None:
    """One parquet file; ``options`` go to ``pyarrow.parquet.write_table``."""
    table = data.to_arrow() if isinstance(data, pl.DataFrame) else data
    write_atomically(path, lambda handle: pq.write_table(table, handle, **options), durable=durable)
