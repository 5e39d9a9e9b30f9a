"""Progress of long work: a tqdm bar on a terminal, plain periodic lines otherwise, nothing when quiet.

Progress is logged at INFO on this module's logger alone, which the command line shows at its
default level (``cli._main``) while the other INFO logs need ``-v``; a program using the Python API
sees it when it enables that logger. One-time preparations (caches built on first use) are
announced here too, with their expected duration.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

from tqdm import tqdm

log = logging.getLogger(__name__)


class Progress:
    """Counts items (notes unless ``unit`` says otherwise); shows items/s and the time left.

    ``label`` names the work on each line and on the bar; ``every_s``: seconds between two plain
    lines. Nothing is shown when ``quiet`` or when this module's logger is off for INFO.
    """

    def __init__(self, *, total: int, quiet: bool = False, every_s: float = 30.0, unit: str = "note",
                 label: str | None = None) -> None:
        self.total = total
        self.done = 0
        self._unit = unit
        self._label = f"{label}: " if label else ""
        self._every_s = every_s
        self._start = self._last = time.monotonic()
        self._bar = None
        self._quiet = quiet or not log.isEnabledFor(logging.INFO)
        if not self._quiet and sys.stderr.isatty():
            self._bar = tqdm(total=total, unit=unit, desc=label, file=sys.stderr, dynamic_ncols=True)

    def update(self, done: int) -> None:
        self.done += done
        if self._bar is not None:
            self._bar.update(done)
            return
        now = time.monotonic()
        if self._quiet or now - self._last < self._every_s:
            return
        self._last = now
        rate = self.done / max(now - self._start, 1e-9)
        eta = (self.total - self.done) / rate if rate else float("inf")
        log.info("%s%d/%d %ss (%.1f %ss/s, about %s left)", self._label, self.done, self.total, self._unit, rate,
                 self._unit, duration(eta))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def announce(what: str, *, seconds: float, cores: int | None = None) -> None:
    """Say that the one-time preparation of ``what`` starts and about how long it takes (on ``cores``
    cores, when the estimate depends on them)."""
    on = f" on {cores} core{'s' if cores != 1 else ''}" if cores else ""
    log.info("preparing %s (one time, about %s%s)…", what, duration(seconds), on)


def duration(seconds: float) -> str:
    """``seconds`` in words a reader takes in at a glance: '40 s', '3 min', '2.5 h'."""
    if seconds != seconds or seconds == float("inf"):
        return "an unknown time"
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@contextlib.contextmanager
def quiet(*names: str | None, level: int = logging.WARNING) -> Iterator[None]:
    """Hold chatty third-party loggers (None: the root logger) at ``level`` for the duration of a call."""
    targets = [logging.getLogger(name) for name in names]
    levels = [target.level for target in targets]
    for target, previous in zip(targets, levels, strict=True):
        target.setLevel(max(previous, level))
    try:
        yield
    finally:
        for target, previous in zip(targets, levels, strict=True):
            target.setLevel(previous)
