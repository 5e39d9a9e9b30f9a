"""Progress of a run: a tqdm bar on a terminal, plain periodic log lines otherwise, nothing when quiet."""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger(__name__)


class Progress:
    """Counts notes; shows notes/s and the time left."""

    def __init__(self, *, total: int, quiet: bool = False, every_s: float = 30.0) -> None:
        self.total = total
        self.done = 0
        self._every_s = every_s
        self._start = self._last = time.monotonic()
        self._bar = None
        self._quiet = quiet
        if not quiet and sys.stderr.isatty():
            self._bar = tqdm(total=total, unit="note", file=sys.stderr, dynamic_ncols=True)

    def update(self, notes: int) -> None:
        self.done += notes
        if self._bar is not None:
            self._bar.update(notes)
            return
        now = time.monotonic()
        if self._quiet or now - self._last < self._every_s:
            return
        self._last = now
        rate = self.done / max(now - self._start, 1e-9)
        eta = (self.total - self.done) / rate if rate else float("inf")
        log.info("%d/%d notes (%.1f notes/s, about %.0f s left)", self.done, self.total, rate, eta)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
