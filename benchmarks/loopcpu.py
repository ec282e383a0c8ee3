"""Where an event loop's CPU goes, by task and callback: the thread CPU time of every
handle the loop runs, summed under the task's coroutine (``task:Coordinator._schedule_
forever``) or the callback's name.

    with handle_cpu() as tally:
        ...  # run the loop
    for name, (seconds, runs) in tally.top(10): ...

A sampling profiler cannot say this on a shared machine (a process waiting for a core
counts as busy) and a tracing one weighs Python calls too much to compare with C; this
costs two clock reads per handle.  It patches :class:`asyncio.Handle` (the pure-Python
loop's, not uvloop's) while the ``with`` lasts, in this process: for benchmarks only.
"""

from __future__ import annotations

import asyncio
import asyncio.events
import contextlib
import time
from collections.abc import Iterator
from typing import Any


class Tally:
    """Seconds of thread CPU and number of runs, by task or callback name."""

    def __init__(self) -> None:
        self.by_name: dict[str, list[float]] = {}

    def add(self, name: str, seconds: float) -> None:
        entry = self.by_name.get(name)
        if entry is None:
            self.by_name[name] = [seconds, 1.0]
        else:
            entry[0] += seconds
            entry[1] += 1

    def total(self) -> float:
        return sum(seconds for seconds, _ in self.by_name.values())

    def top(self, count: int) -> list[tuple[str, float, int]]:
        """The ``count`` names that took the most CPU: (name, seconds, runs)."""
        ranked = sorted(self.by_name.items(), key=lambda item: -item[1][0])
        return [(name, seconds, int(runs)) for name, (seconds, runs) in ranked[:count]]


def handle_name(callback: Any) -> str:
    """``task:<coroutine qualname>`` for a task's step, else the callback's qualname."""
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        return "task:" + str(getattr(coro, "__qualname__", type(coro).__qualname__))
    name = getattr(callback, "__qualname__", None)
    return name if isinstance(name, str) else type(callback).__qualname__


@contextlib.contextmanager
def handle_cpu() -> Iterator[Tally]:
    tally = Tally()
    original = asyncio.events.Handle._run
    clock = time.thread_time

    def timed(handle: asyncio.Handle) -> None:
        start = clock()
        try:
            original(handle)
        finally:
            tally.add(handle_name(handle._callback), clock() - start)  # type: ignore[attr-defined]

    asyncio.events.Handle._run = timed  # type: ignore[method-assign,assignment]
    try:
        yield tally
    finally:
        asyncio.events.Handle._run = original  # type: ignore[method-assign]
