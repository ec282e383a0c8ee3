"""What coordinators and workers count for Prometheus, kept in plain Python structures.

Updating a metric is a dict lookup and an increment on the component's own event loop: no
lock, no prometheus-client object on the hot path, nothing global.  Each component owns its
recorder (:class:`CoordinatorMetrics`, :class:`WorkerMetrics`); :mod:`aexec.exposition`
turns a recorder, with the gauges read from the component at scrape time, into Prometheus
metric families for that component's own registry.

Labels are bounded: pipelines, step *names* (the code a worker runs, never a step key like
``name[17]`` nor a run id), queues and statuses.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from aexec.demand import Durations
from aexec.events import Event, EventKind

if TYPE_CHECKING:
    from aexec.batch import ActiveRun

DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
"""Upper bounds (seconds) of the duration histograms: steps last milliseconds to hours."""

STEP_STATUS = {
    EventKind.STEP_DISPATCHED: "dispatched",
    EventKind.STEP_SUCCEEDED: "succeeded",
    EventKind.STEP_FAILED: "failed",
    EventKind.STEP_RETRYING: "retried",
    EventKind.STEP_SKIPPED: "skipped",
    EventKind.STEP_CANCELLED: "cancelled",
}
"""The ``status`` label of ``aexec_steps_total`` each step event counts under."""

RUN_STATUS = {
    EventKind.RUN_SUCCEEDED: "succeeded",
    EventKind.RUN_FAILED: "failed",
    EventKind.RUN_CANCELLED: "cancelled",
}

Labels = tuple[str, ...]


class Histogram:
    """Cumulative-on-read histograms, one series per label tuple: per series, a count per
    bucket (the last one is +Inf), the sum and the count."""

    __slots__ = ("buckets", "series")

    def __init__(self, buckets: Sequence[float] = DURATION_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.series: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, labels: Labels, value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = ([0] * (len(self.buckets) + 1), [0.0])
        series[0][bisect.bisect_left(self.buckets, value)] += 1
        series[1][0] += value

    def cumulative(self, labels: Labels) -> tuple[list[tuple[str, int]], float]:
        """The series' ``(le, cumulative count)`` pairs (ending with ``+Inf``) and its sum."""
        counts, total = self.series[labels]
        running = 0
        pairs: list[tuple[str, int]] = []
        for bound, count in zip([*map(_bound, self.buckets), "+Inf"], counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs, total[0]


def _bound(value: float) -> str:
    return repr(float(value))


class CoordinatorMetrics:
    """Counts what a coordinator recorded: steps by status, step durations (by pipeline and
    step name), runs by status and their durations; and keeps the observed step durations
    that weigh predicted demand (:mod:`aexec.demand`)."""

    __slots__ = ("durations", "run_seconds", "runs", "step_seconds", "steps")

    def __init__(self) -> None:
        self.steps: dict[Labels, int] = {}  # (pipeline, step, status)
        self.step_seconds = Histogram()  # (pipeline, step)
        self.runs: dict[Labels, int] = {}  # (pipeline, status)
        self.run_seconds = Histogram()  # (pipeline, status)
        self.durations = Durations()

    def recorded(self, events: Iterable[Event], runs: Mapping[str, ActiveRun]) -> None:
        """``events`` are committed; ``runs`` (by id) has the runs they belong to."""
        steps, runs_total = self.steps, self.runs
        for event in events:
            kind = event.kind
            status = STEP_STATUS.get(kind)
            run = runs.get(event.run_id)
            if run is None:
                continue
            pipeline = run.plan.pipeline
            if status is not None:
                index = run.plan.index.get(event.step or "")
                if index is None:
                    continue
                step = run.plan.steps[index]
                labels = (pipeline, step.name, status)
                steps[labels] = steps.get(labels, 0) + 1
                started = event.data.get("started_at") if status != "dispatched" else None
                if isinstance(started, float | int) and event.ts >= started:
                    seconds = event.ts - started
                    self.step_seconds.observe((pipeline, step.name), seconds)
                    if status == "succeeded":
                        self.durations.observe(pipeline, step, seconds)
                continue
            ended = RUN_STATUS.get(kind)
            if ended is not None:
                key = (pipeline, ended)
                runs_total[key] = runs_total.get(key, 0) + 1
                self.run_seconds.observe(key, max(0.0, event.ts - run.created_at))


class WorkerMetrics:
    """Counts the attempts a worker finished, by queue, step name and outcome
    (``succeeded``, ``failed``, ``lost``), with their durations."""

    __slots__ = ("attempts", "seconds")

    def __init__(self) -> None:
        self.attempts: dict[Labels, int] = {}  # (queue, step, outcome)
        self.seconds = Histogram()  # (queue, step)

    def finished(self, queue: str, step: str, outcome: str, seconds: float) -> None:
        labels = (queue, step, outcome)
        self.attempts[labels] = self.attempts.get(labels, 0) + 1
        if outcome != "lost":
            self.seconds.observe((queue, step), max(0.0, seconds))


__all__ = [
    "DURATION_BUCKETS",
    "RUN_STATUS",
    "STEP_STATUS",
    "CoordinatorMetrics",
    "Histogram",
    "WorkerMetrics",
]
