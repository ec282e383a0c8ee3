"""The runs a worker knows have ended, from the announcements on
:data:`~aexec.wire.RUNS_ENDED_TOPIC`: a worker acks and skips the step messages of those runs
without running them.

The set is bounded the way the retained topic is (:data:`~aexec.wire.RETAINED_MAX_AGE`,
:data:`~aexec.wire.RETAINED_MAX_BYTES`): a run is forgotten once its announcement is old
enough that a worker starting now would not read it either.
"""

from __future__ import annotations

import collections
import time

from aexec.wire import RETAINED_MAX_AGE, RETAINED_MAX_BYTES


class EndedRuns:
    """Run ids announced ended, with when (``ts``, wall-clock seconds) and the size of the
    announcement, oldest first."""

    __slots__ = ("_max_age", "_max_bytes", "_runs", "_size")

    def __init__(
        self, *, max_age: float = RETAINED_MAX_AGE, max_bytes: int = RETAINED_MAX_BYTES
    ) -> None:
        self._max_age = max_age
        self._max_bytes = max_bytes
        self._runs: collections.OrderedDict[str, tuple[float, int]] = collections.OrderedDict()
        self._size = 0

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._runs

    def __len__(self) -> int:
        return len(self._runs)

    def add(self, run_id: str, ts: float, size: int) -> bool:
        """Remember that ``run_id`` ended at ``ts`` (an announcement of ``size`` bytes);
        False if it was known already (an announcement read again after a reconnection)."""
        if run_id in self._runs:
            return False
        self._runs[run_id] = (ts, size)
        self._size += size
        self._forget_old()
        return True

    def _forget_old(self) -> None:
        runs, oldest = self._runs, time.time() - self._max_age
        while runs:
            ts, size = next(iter(runs.values()))
            if ts >= oldest and self._size <= self._max_bytes:
                return
            runs.popitem(last=False)
            self._size -= size


__all__ = ["EndedRuns"]
