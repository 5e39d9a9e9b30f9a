"""``coder prepare``: build ahead of time every cache that a model's first run builds.

Loading a model builds what its first run needs and keeps it in ``coder.ontology.cache.cache_dir()``:
the ontology tables, the ontology searches' index, the dense search's int8 encoder and term vectors.
Preparing loads the model once, so that a container build or a machine's first night does that work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from coder.errors import RunIOError
from coder.assembly import load_model
from coder.ontology.cache import CACHE_DIR_ENV, cache_dir


@dataclass(frozen=True)
class Prepared:
    """The cache folder and the files that preparing it wrote there (name, bytes), or found there already."""

    folder: Path
    built: tuple[tuple[str, int], ...]
    found: tuple[tuple[str, int], ...]

    def lines(self) -> list[str]:
        """What was built and where, one line a file, then one line for the files already there."""
        lines = [f"built {name} ({_megabytes(size)})" for name, size in self.built]
        if not self.built:
            lines.append("nothing to build: every cache was already there")
        files = self.built + self.found
        chosen = f"from ${CACHE_DIR_ENV}" if os.environ.get(CACHE_DIR_ENV) else f"the user's; ${CACHE_DIR_ENV} names another"
        lines.append(f"cache folder {self.folder} ({chosen}): {len(files)} file{'s' if len(files) != 1 else ''}, "
                     f"{_megabytes(sum(size for _, size in files))}")
        return lines


def prepare_caches(model: Path | None = None) -> Prepared:
    """Load ``model`` (default ``coder.model.folder.default_model_path()``) on the CPU, which builds
    every cache it lacks. A cache folder that cannot be written is a ``RunIOError``: preparing
    is for the runs after it."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunIOError(f"cannot create the cache folder {folder} ({error.strerror}); set {CACHE_DIR_ENV} to a "
                         "writable folder") from error
    if not os.access(folder, os.W_OK):
        raise RunIOError(f"the cache folder {folder} is not writable; set {CACHE_DIR_ENV} to a writable folder")
    before = _files(folder)
    load_model(model, device="cpu")
    after = _files(folder)
    new = {name for name, stat in after.items() if before.get(name) != stat}
    return Prepared(folder=folder, built=tuple((name, size) for name, (size, _) in after.items() if name in new),
                    found=tuple((name, size) for name, (size, _) in after.items() if name not in new))


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file under ``folder`` (path relative to it): (bytes, modification time in ns)."""
    return {path.relative_to(folder).as_posix(): (stat.st_size, stat.st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file() and (stat := path.stat())}


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
