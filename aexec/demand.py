"""Predicted demand per queue: the work that the runs in flight hold, or will soon make ready,
for each queue's workers.  Pure: no I/O, no event loop.

A queue's depth counts only messages already published and not yet taken; an autoscaler
that watches it scales after the work has arrived, and KEDA's RabbitMQ scaler misses the
steps in flight altogether.  The coordinator knows more: every in-flight run's DAG.  For
each run this counts, per queue,

* the steps *queued* (dispatched, not started) or *retrying* (waiting out a backoff),
* the steps *running*, and
* the steps *upcoming*: pending steps whose every dependency is succeeded or in flight
  (queued, running or retrying), i.e. the DAG frontier that the current wave releases;

and weighs each by its step's observed mean duration (:class:`Durations`), giving the
seconds of work a queue's workers face now and next.  Steps further down the DAG are not
counted: how soon they come depends on work not yet started.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from aexec.plan import Plan, PlanStep
from aexec.types import StepStatus

K = TypeVar("K")

DEFAULT_DURATION = 1.0
"""Seconds a step is taken to last before any of its kind has been observed."""

_QUEUED = StepStatus.QUEUED
_RUNNING = StepStatus.RUNNING
_RETRYING = StepStatus.RETRYING
_SUCCEEDED = StepStatus.SUCCEEDED
_PENDING = StepStatus.PENDING


@dataclass(slots=True)
class QueueDemand:
    """The demand on one queue: step counts, and their weight in seconds of work."""

    queued: int = 0
    running: int = 0
    retrying: int = 0
    upcoming: int = 0
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        return self.queued + self.running + self.retrying + self.upcoming


class Durations:
    """Observed step durations: the mean per ``(pipeline, step name)``, falling back on the
    mean of the step's queue, then on ``default``.  Adding an observation is O(1)."""

    __slots__ = ("_by_queue", "_by_step", "default")

    def __init__(self, default: float = DEFAULT_DURATION) -> None:
        self.default = default
        self._by_step: dict[tuple[str, str], list[float]] = {}  # → [sum, count]
        self._by_queue: dict[str, list[float]] = {}

    def observe(self, pipeline: str, step: PlanStep, seconds: float) -> None:
        _add(self._by_step, (pipeline, step.name), seconds)
        _add(self._by_queue, step.queue, seconds)

    def mean(self, pipeline: str, step: PlanStep) -> float:
        total = self._by_step.get((pipeline, step.name)) or self._by_queue.get(step.queue)
        return self.default if total is None else total[0] / total[1]


def _add(table: dict[K, list[float]], key: K, seconds: float) -> None:
    total = table.get(key)
    if total is None:
        table[key] = [seconds, 1.0]
    else:
        total[0] += seconds
        total[1] += 1.0


def demand(
    runs: Iterable[tuple[Plan, Sequence[StepStatus]]],
    duration: Callable[[str, PlanStep], float],
) -> dict[str, QueueDemand]:
    """The demand per queue of ``runs`` (each its plan and its steps' statuses, in plan
    order), each step weighted by ``duration(pipeline, step)`` seconds."""
    found: dict[str, QueueDemand] = {}
    for plan, status in runs:
        pipeline = plan.pipeline
        for step in plan.steps:
            s = status[step.index]
            if s is _QUEUED:
                slot = "queued"
            elif s is _RETRYING:
                slot = "retrying"
            elif s is _RUNNING:
                slot = "running"
            elif s is _PENDING and all(
                status[d] is _SUCCEEDED
                or status[d] is _QUEUED
                or status[d] is _RUNNING
                or status[d] is _RETRYING
                for d in step.deps
            ):
                slot = "upcoming"
            else:
                continue
            queue = found.get(step.queue)
            if queue is None:
                queue = found[step.queue] = QueueDemand()
            setattr(queue, slot, getattr(queue, slot) + 1)
            queue.seconds += duration(pipeline, step)
    return found


__all__ = ["DEFAULT_DURATION", "Durations", "QueueDemand", "demand"]
