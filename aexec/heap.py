"""Giving the memory that finished runs freed back to the operating system.

A coordinator's memory follows the steps it has in flight: 10,000 steps dispatched at once
take about 40 MB.  Once they end, their objects are freed, but into CPython's pools and
the C library's heap, which keep the pages: the resident set stays at the burst's
high-water mark, and swings from wave to wave with where the last objects happened to
land.  glibc's ``malloc_trim(0)`` hands the free pages of its heap back (``madvise``), so
that what the process holds follows what it uses.  On a C library without it (musl,
macOS, Windows) :func:`releaser` finds nothing and nothing is trimmed.

:class:`Trimmer` decides when, off the hot path: once the coordinator has gone idle (no
run left) or after many runs ended, a short quiet time later, and never more often than
once per ``interval``.  A trim costs a few milliseconds of the event loop (measured in
BENCHMARKS.md, "Scale"), so at most that per ``interval``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

QUIET = 0.25
"""Seconds a trim waits after what woke it, so that a burst's tail is freed first."""

RUNS_PER_TRIM = 1000
"""Runs ended that wake a trim while other runs are still in flight."""


def releaser() -> Callable[[], object] | None:
    """``malloc_trim(0)`` of the process's C library, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # here: only a process that trims pays for importing it

    try:
        libc = ctypes.CDLL(None)
        malloc_trim = libc.malloc_trim  # glibc only (musl has none)
    except (OSError, AttributeError):
        return None
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return lambda: malloc_trim(0)


class Trimmer:
    """Trims the C heap (``release``) once runs have ended: when none is left in flight, or
    when ``runs_per_trim`` have ended since the last trim; ``quiet`` seconds after that,
    and at most once per ``interval`` seconds.  :meth:`run` is its loop, owned by the
    component's task group; :meth:`ended` is all the hot path does (a counter and a flag).
    ``trims`` and ``seconds`` count what it did and what that cost; ``trimmed`` is set
    by each trim."""

    def __init__(
        self,
        release: Callable[[], object] | None,
        *,
        interval: float,
        quiet: float = QUIET,
        runs_per_trim: int = RUNS_PER_TRIM,
    ) -> None:
        self._release = release
        self._interval = interval
        self._quiet = quiet
        self._runs_per_trim = runs_per_trim
        self._due = asyncio.Event()
        self._ended = 0
        self._last = float("-inf")
        self.trims = 0
        self.seconds = 0.0
        self.trimmed = asyncio.Event()

    def ended(self, runs: int, in_flight: int) -> None:
        """``runs`` runs just ended, ``in_flight`` are left."""
        if self._release is None:
            return
        self._ended += runs
        if in_flight == 0 or self._ended >= self._runs_per_trim:
            self._due.set()

    async def run(self) -> None:
        if self._release is None:
            return
        while True:
            await self._due.wait()
            await asyncio.sleep(max(self._quiet, self._last + self._interval - time.monotonic()))
            self._due.clear()
            self._ended = 0
            self.trim()

    def trim(self) -> None:
        """Trim now."""
        if self._release is None:
            return
        started = time.perf_counter()
        self._release()
        spent = time.perf_counter() - started
        self._last = time.monotonic()
        self.trims += 1
        self.seconds += spent
        self.trimmed.set()
        log.debug("returned freed memory to the system in %.1f ms", spent * 1000)
