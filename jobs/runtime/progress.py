"""Progress on long work: a log line with counts and rates every few seconds, and the per-item time limit."""

from __future__ import annotations

import logging
import time

from ops.io.errors import ItemTimeout

log = logging.getLogger("crossmatch")


class Progress:
    """Logs ``done/total`` with a rate at most every ``every`` seconds, and once at the end."""

    def __init__(self, what: str, total: int, total_bytes: int = 0, every: float = 5.0) -> None:
        self.what, self.total, self.total_bytes, self.every = what, total, total_bytes, every
        self.done = self.bytes = 0
        self.started = self._last = time.monotonic()

    def update(self, n: int, nbytes: int = 0) -> None:
        self.done += n
        self.bytes += nbytes
        now = time.monotonic()
        if now - self._last >= self.every or self.done >= self.total:
            self._last = now
            self.report()

    def report(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        extra = ""
        if self.total_bytes:
            mib, total_mib = self.bytes / 2**20, self.total_bytes / 2**20
            extra = f", {mib:.1f}/{total_mib:.1f} MiB, {mib / elapsed:.1f} MiB/s"
        log.info("%s: %d/%d (%.0f%%)%s, %.1f s", self.what, self.done, self.total, pct, extra, elapsed)


class ItemClock:
    """The per-item time limit, checked between units of one input's work (frames, audio chunks): a source that
    is slow but keeps going (hours of video, a huge declared duration) ends at the limit with what it produced,
    reported, instead of holding a worker. A single decoder call is not interrupted; FFmpeg and Pillow bound their
    own work per call, and the sizes they accept are bounded by --max-pixels and --max-frames."""

    def __init__(self, limit: float | None) -> None:
        self.limit, self.started = limit, time.monotonic()

    def check(self, what: str) -> None:
        if self.limit and time.monotonic() - self.started > self.limit:
            raise ItemTimeout(f"{what} took more than {self.limit:g} s (--item-timeout)")
