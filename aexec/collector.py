"""The garbage collector's pace while an embedded executor is open.

An embedded run allocates container objects (events, messages, deliveries, tasks) at a
steady pace, and nearly all of them die young by reference counting or live as long as
the run.  With CPython's default young-generation threshold (700 allocations) the
collector runs every few steps and makes one or two full collections over a run of
11,002 steps: 0.06-0.08 s of its 0.8-1.0 s of CPU, measured with :data:`gc.callbacks`;
with a threshold of 10,000 it takes about 0.01 s.

:func:`relaxed` raises the young threshold for as long as an embedded executor is open
(it compiles and runs its pipelines in the process) and puts back what it found once the
last one is closed, unless someone changed the thresholds meanwhile (then theirs stay).
A collector that is off (threshold 0), or already at least as relaxed, is left alone.
The thresholds are the process's, so executors open at once share one relaxation: the
count of them is kept here, the only state of the module.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 10_000
"""Allocations (less deallocations) of container objects between two young collections
while an embedded executor is open; CPython's default is 700."""


class _Relaxation:
    """How many executors want the collector relaxed, and the thresholds to put back."""

    __slots__ = ("engines", "ours", "previous")

    def __init__(self) -> None:
        self.engines = 0
        self.previous: tuple[int, int, int] | None = None
        self.ours: tuple[int, int, int] | None = None


_relaxation = _Relaxation()


@contextmanager
def relaxed(young: int = YOUNG_THRESHOLD) -> Iterator[None]:
    """Raise the young-generation threshold to ``young`` while in the block."""
    state = _relaxation
    if state.engines == 0:
        current = gc.get_threshold()
        if 0 < current[0] < young:
            state.previous = current
            state.ours = (young, current[1], current[2])
            gc.set_threshold(*state.ours)
    state.engines += 1
    try:
        yield
    finally:
        state.engines -= 1
        if state.engines == 0:
            if state.previous is not None and gc.get_threshold() == state.ours:
                gc.set_threshold(*state.previous)
            state.previous = state.ours = None


__all__ = ["YOUNG_THRESHOLD", "relaxed"]
