"""Run admission: which submitted runs a coordinator starts now, and which wait, queued.
Pure: no I/O, no event loop.

A coordinator with ``max_concurrent_runs`` starts at most that many runs at once, and with
``run_limits`` at most ``N`` runs carrying a tag: ``{"tenant=acme": 2}`` caps the runs
tagged ``tenant=acme``, ``{"tenant": 2}`` the runs of each ``tenant`` value.  A run that
does not fit waits, queued (``pending`` in the store, with a ``run_queued`` event), and
runs are admitted by priority, then submission time, with aging: a waiting run gains one
priority level every ``aging`` seconds, so a low-priority run waits a bounded time under a
steady stream of high-priority ones.  A run blocked by a tag limit does not block the runs
behind it that fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aexec.errors import ConfigError

DEFAULT_AGING = 60.0
"""Seconds of waiting worth one priority level."""

Counter = tuple[str, str]
"""``(limit name, tag value)``: what a run limit counts (see :meth:`AdmissionPolicy.counters`)."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A run that asks to start: its priority (0..10), submission time and tags."""

    run_id: str
    priority: int
    created_at: float
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    """``max_concurrent_runs`` (None: no cap) and ``run_limits`` (see the module)."""

    max_concurrent_runs: int | None = None
    run_limits: Mapping[str, int] = field(default_factory=dict)
    aging: float = DEFAULT_AGING

    def __post_init__(self) -> None:
        cap = self.max_concurrent_runs
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
            raise ConfigError(f"max_concurrent_runs must be a positive integer, not {cap!r}")
        for name, size in self.run_limits.items():
            if not isinstance(name, str) or not name.strip("=") or isinstance(size, bool):
                raise ConfigError(f"run limit {name!r} must name a tag (tag or tag=value)")
            if not isinstance(size, int) or size < 1:
                raise ConfigError(f"run limit {name!r} must be a positive integer, not {size!r}")
        if not self.aging > 0:
            raise ConfigError("admission aging must be a positive number of seconds")

    @property
    def limited(self) -> bool:
        return self.max_concurrent_runs is not None or bool(self.run_limits)

    def counters(self, tags: Mapping[str, str]) -> list[Counter]:
        """The counters a run with ``tags`` takes: one per limit on one of its tag values
        (``(tag=value, "")``) or on one of its tags (``(tag, value)``: per value)."""
        names: list[Counter] = []
        for tag, value in tags.items():
            exact = f"{tag}={value}"
            if exact in self.run_limits:
                names.append((exact, ""))
            if tag in self.run_limits:
                names.append((tag, value))
        return names

    def score(self, run: Candidate, now: float) -> tuple[float, float, str]:
        """The admission order's sort key (smallest first)."""
        aged = run.priority + max(0.0, now - run.created_at) / self.aging
        return (-aged, run.created_at, run.run_id)


class Admission:
    """The runs a coordinator runs and those waiting, under ``policy``."""

    __slots__ = ("_counts", "_running", "_waiting", "policy")

    def __init__(self, policy: AdmissionPolicy) -> None:
        self.policy = policy
        self._running: dict[str, list[Counter]] = {}  # run id → the counters it holds
        self._counts: dict[Counter, int] = {}
        self._waiting: dict[str, Candidate] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    def offer(self, run: Candidate, now: float) -> bool:
        """``run`` asks to start: True if it may now (it counts as running until
        :meth:`finished`), False if it waits (a later :meth:`finished` returns it)."""
        if run.run_id in self._running:
            return True
        if not self._waiting and self._fits(run):
            self._take(run)
            return True
        self._waiting[run.run_id] = run
        admitted = self._admit(now)
        return run.run_id in admitted

    def occupy(self, run: Candidate) -> None:
        """``run`` runs already (taken over): it counts, even over the caps."""
        if run.run_id not in self._running:
            self._take(run)

    def finished(self, run_id: str, now: float) -> list[str]:
        """Run ``run_id`` ended, or is not driven here any more (running or waiting);
        returns the waiting runs admitted now, in admission order."""
        self._waiting.pop(run_id, None)
        counters = self._running.pop(run_id, None)
        if counters is None:
            return []
        for counter in counters:
            self._counts[counter] -= 1
        return self._admit(now)

    def position(self, run_id: str, now: float) -> int | None:
        """Where ``run_id`` is in the queue (1: next), or None if it does not wait."""
        if run_id not in self._waiting:
            return None
        order = self.queue(now)
        return order.index(run_id) + 1

    def queue(self, now: float) -> list[str]:
        """The waiting runs in admission order."""
        score = self.policy.score
        return [r.run_id for r in sorted(self._waiting.values(), key=lambda r: score(r, now))]

    def _fits(self, run: Candidate) -> bool:
        policy = self.policy
        cap = policy.max_concurrent_runs
        if cap is not None and len(self._running) >= cap:
            return False
        counts = self._counts
        limits = policy.run_limits
        return all(counts.get(c, 0) < limits[c[0]] for c in policy.counters(run.tags))

    def _take(self, run: Candidate) -> None:
        counters = self.policy.counters(run.tags)
        for counter in counters:
            self._counts[counter] = self._counts.get(counter, 0) + 1
        self._running[run.run_id] = counters

    def _admit(self, now: float) -> list[str]:
        admitted: list[str] = []
        cap = self.policy.max_concurrent_runs
        for run_id in self.queue(now):
            if cap is not None and len(self._running) >= cap:
                break
            run = self._waiting[run_id]
            if self._fits(run):
                del self._waiting[run_id]
                self._take(run)
                admitted.append(run_id)
        return admitted


def queue_order(runs: Iterable[Candidate], now: float, aging: float = DEFAULT_AGING) -> list[str]:
    """Runs waiting for admission in the order a coordinator with ``aging`` admits them
    (for showing positions: tag limits may let a later run go first)."""
    policy = AdmissionPolicy(aging=aging)
    return [r.run_id for r in sorted(runs, key=lambda r: policy.score(r, now))]


__all__ = ["DEFAULT_AGING", "Admission", "AdmissionPolicy", "Candidate", "queue_order"]
