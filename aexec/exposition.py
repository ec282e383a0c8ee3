"""Prometheus metric families of one coordinator or one worker, for its own registry.

Counters and histograms come from the component's recorder (:mod:`aexec.metrics`); gauges
— runs and steps in flight, predicted demand, queue depths — are read from the component
when Prometheus scrapes, so they cost nothing between scrapes.  Every name starts with
``aexec_``.  A registry per component, never prometheus-client's global default one.

Coordinator::

    aexec_runs_in_flight{pipeline}                      gauge
    aexec_runs_total{pipeline,status}                   counter (succeeded, failed, cancelled)
    aexec_run_duration_seconds{pipeline,status}         histogram
    aexec_steps_total{pipeline,step,status}             counter (dispatched, succeeded,
                                                        failed, retried, skipped, cancelled)
    aexec_step_duration_seconds{pipeline,step}          histogram (attempts that completed)
    aexec_steps_in_flight{queue,state}                  gauge (queued, running, retrying)
    aexec_queue_predicted_demand_steps{queue}           gauge
    aexec_queue_predicted_demand_seconds{queue}         gauge
    aexec_queue_depth{queue}                            gauge (messages waiting in the broker)

Worker::

    aexec_worker_steps_in_flight{queue}                 gauge
    aexec_worker_capacity{queue}                        gauge (attempts it runs at once)
    aexec_worker_attempts_total{queue,step,outcome}     counter (succeeded, failed, lost)
    aexec_worker_attempt_duration_seconds{queue,step}   histogram
    aexec_queue_depth{queue}                            gauge

Predicted demand is explained in :mod:`aexec.demand`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from aexec.demand import demand
from aexec.metrics import CoordinatorMetrics, Histogram, Labels, WorkerMetrics

if TYPE_CHECKING:
    from aexec.batch import ActiveRun


def registry(*collectors: Collector) -> CollectorRegistry:
    """A registry of its own holding ``collectors`` (and nothing of the process default)."""
    found = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        found.register(collector)
    return found


class CoordinatorCollector(Collector):
    """The metrics of a coordinator: ``runs()`` are the runs it drives now, ``depths()``
    the last known depth of each step queue."""

    def __init__(
        self,
        metrics: CoordinatorMetrics,
        runs: Callable[[], Mapping[str, ActiveRun]],
        depths: Callable[[], Mapping[str, int]],
    ) -> None:
        self._metrics = metrics
        self._runs = runs
        self._depths = depths

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        runs = list(self._runs().values())
        in_flight = GaugeMetricFamily(
            "aexec_runs_in_flight", "Runs this coordinator drives now.", labels=["pipeline"]
        )
        by_pipeline: dict[str, int] = {}
        for run in runs:
            by_pipeline[run.plan.pipeline] = by_pipeline.get(run.plan.pipeline, 0) + 1
        for pipeline, count in sorted(by_pipeline.items()):
            in_flight.add_metric([pipeline], count)
        yield in_flight
        yield _counter(
            "aexec_runs", "Runs that ended, by status.", ["pipeline", "status"], metrics.runs
        )
        yield _histogram(
            "aexec_run_duration_seconds",
            "Run duration, from submission (or takeover) to its end.",
            ["pipeline", "status"],
            metrics.run_seconds,
        )
        yield _counter(
            "aexec_steps",
            "Step transitions recorded, by status.",
            ["pipeline", "step", "status"],
            metrics.steps,
        )
        yield _histogram(
            "aexec_step_duration_seconds",
            "Duration of step attempts that completed (succeeded or failed).",
            ["pipeline", "step"],
            metrics.step_seconds,
        )
        found = demand(
            ((run.plan, run.state.status) for run in runs if not run.state.finished),
            metrics.durations.mean,
        )
        steps = GaugeMetricFamily(
            "aexec_steps_in_flight",
            "Steps dispatched and not finished, per queue: queued (not started), running, "
            "retrying (waiting out a backoff).",
            labels=["queue", "state"],
        )
        predicted_steps = GaugeMetricFamily(
            "aexec_queue_predicted_demand_steps",
            "Steps queued, running, retrying or about to become ready (the DAG frontier of "
            "the runs in flight), per queue.",
            labels=["queue"],
        )
        predicted_seconds = GaugeMetricFamily(
            "aexec_queue_predicted_demand_seconds",
            "The same steps weighted by their observed mean duration: seconds of work.",
            labels=["queue"],
        )
        for queue, need in sorted(found.items()):
            steps.add_metric([queue, "queued"], need.queued)
            steps.add_metric([queue, "running"], need.running)
            steps.add_metric([queue, "retrying"], need.retrying)
            predicted_steps.add_metric([queue], need.steps)
            predicted_seconds.add_metric([queue], need.seconds)
        yield steps
        yield predicted_steps
        yield predicted_seconds
        yield queue_depths(self._depths())


class WorkerCollector(Collector):
    """The metrics of a worker: ``in_flight()`` and ``capacity()`` per queue, ``depths()``
    the last known depth of each queue it serves."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        in_flight: Callable[[], Mapping[str, int]],
        capacity: Callable[[], Mapping[str, int]],
        depths: Callable[[], Mapping[str, int]],
    ) -> None:
        self._metrics = metrics
        self._in_flight = in_flight
        self._capacity = capacity
        self._depths = depths

    def collect(self) -> Iterator[Metric]:
        yield _gauge(
            "aexec_worker_steps_in_flight",
            "Step attempts this worker runs now, per queue.",
            self._in_flight(),
        )
        yield _gauge(
            "aexec_worker_capacity",
            "Step attempts this worker takes from each queue at once.",
            self._capacity(),
        )
        yield _counter(
            "aexec_worker_attempts",
            "Step attempts this worker finished, by outcome (succeeded, failed, lost).",
            ["queue", "step", "outcome"],
            self._metrics.attempts,
        )
        yield _histogram(
            "aexec_worker_attempt_duration_seconds",
            "Duration of the step attempts this worker ran to an outcome.",
            ["queue", "step"],
            self._metrics.seconds,
        )
        yield queue_depths(self._depths())


def queue_depths(depths: Mapping[str, int]) -> GaugeMetricFamily:
    return _gauge("aexec_queue_depth", "Step messages waiting in the broker, per queue.", depths)


def _gauge(name: str, documentation: str, values: Mapping[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["queue"])
    for queue, value in sorted(values.items()):
        family.add_metric([queue], value)
    return family


def _counter(
    name: str, documentation: str, labels: list[str], values: Mapping[Labels, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


def _histogram(
    name: str, documentation: str, labels: list[str], histogram: Histogram
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for key in sorted(histogram.series):
        buckets, total = histogram.cumulative(key)
        family.add_metric(list(key), buckets, total)
    return family


__all__ = ["CoordinatorCollector", "WorkerCollector", "queue_depths", "registry"]
