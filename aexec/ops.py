"""The operations endpoint of ``aexec coordinator`` and ``aexec worker start``: what their
``/metrics``, ``/healthz`` and ``/readyz`` (:mod:`aexec.endpoint`) read, composed from
the running component.

Liveness fails once the component stopped or failed; readiness needs it started and
consuming, the broker answering (a passive declare of its queues, which also reads their
depths) and, for a coordinator, the store answering.  The endpoint opens once the broker
answers (an unreachable broker is the one error a start reports) and before the component
consumes, so that a process still starting is alive and not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable

from prometheus_client.registry import CollectorRegistry

from aexec.batch import ActiveRun
from aexec.config import COORDINATOR_METRICS_PORT, WORKER_METRICS_PORT, Settings
from aexec.endpoint import Checks, Endpoint
from aexec.errors import ConfigError, StoreError, TransportError
from aexec.executor import Executor
from aexec.exposition import CoordinatorCollector, WorkerCollector, registry
from aexec.metrics import CoordinatorMetrics, WorkerMetrics
from aexec.transport import Transport
from aexec.wire import step_queue
from aexec.worker import Worker

log = logging.getLogger(__name__)


class Depths:
    """The last known depth of each step queue, read from the broker on refresh."""

    def __init__(self) -> None:
        self.latest: dict[str, int] = {}

    async def read(self, transport: Transport, queues: Iterable[str]) -> None:
        """Read the depths of step queues ``queues`` (logical names); raises
        :class:`~aexec.errors.TransportError` if the broker does not answer."""
        names = {step_queue(queue): queue for queue in queues}
        found = await transport.queue_depths(names)
        self.latest = {names[name]: depth for name, depth in found.items()}


@contextlib.asynccontextmanager
async def coordinator_endpoint(
    settings: Settings,
    executor: Executor,
    metrics: CoordinatorMetrics,
    *,
    ready: asyncio.Event,
    stop: asyncio.Event,
) -> AsyncIterator[Endpoint | None]:
    """Serve the endpoint of the coordinator ``executor`` runs (None if it is off)."""
    depths = Depths()

    def runs() -> dict[str, ActiveRun]:
        coordinator = executor.coordinator
        return {} if coordinator is None else coordinator.runs

    def live() -> str | None:
        coordinator = executor.coordinator
        if coordinator is not None and coordinator.stopped.done() and not stop.is_set():
            return "the coordinator stopped"
        return None

    async def refresh() -> None:
        coordinator = executor.coordinator
        if coordinator is not None:
            await depths.read(coordinator.transport, coordinator.queues)

    async def is_ready() -> str | None:
        coordinator = executor.coordinator
        if stop.is_set():
            return "stopping"
        if not ready.is_set() or coordinator is None:
            return "starting"
        if not coordinator.running:
            return "the coordinator stopped"
        try:
            await coordinator.transport.queue_depths([coordinator.reply_queue])
        except TransportError as exc:
            return f"broker: {exc}"
        try:
            await executor.store.list_runs(limit=1)
        except StoreError as exc:
            return f"store: {exc}"
        return None

    collector = CoordinatorCollector(metrics, runs, lambda: depths.latest)
    checks = Checks(live, is_ready, refresh)
    async with _serving(
        settings, COORDINATOR_METRICS_PORT, registry(collector), checks, "coordinator"
    ) as endpoint:
        yield endpoint


@contextlib.asynccontextmanager
async def worker_endpoint(
    settings: Settings,
    worker: Callable[[], Worker | None],
    metrics: WorkerMetrics,
    *,
    ready: asyncio.Event,
) -> AsyncIterator[Endpoint | None]:
    """Serve the endpoint of the worker ``worker()`` returns once it exists (None if off)."""
    depths = Depths()

    def live() -> str | None:
        current = worker()
        if current is not None and current.terminated.is_set():
            return "the worker was told to terminate, or failed"
        return None

    async def refresh() -> None:
        current = worker()
        if current is not None:
            await depths.read(current.transport, current.queues)

    async def is_ready() -> str | None:
        current = worker()
        if not ready.is_set() or current is None:
            return "starting"
        if not current.consuming:
            return "not consuming: draining or stopped"
        try:
            await depths.read(current.transport, current.queues)
        except TransportError as exc:
            return f"broker: {exc}"
        return None

    def in_flight() -> dict[str, int]:
        current = worker()
        return {} if current is None else current.in_flight_by_queue()

    def capacity() -> dict[str, int]:
        current = worker()
        return {} if current is None else dict.fromkeys(current.queues, current.prefetch)

    collector = WorkerCollector(metrics, in_flight, capacity, lambda: depths.latest)
    checks = Checks(live, is_ready, refresh)
    async with _serving(
        settings, WORKER_METRICS_PORT, registry(collector), checks, "worker"
    ) as endpoint:
        yield endpoint


@contextlib.asynccontextmanager
async def _serving(
    settings: Settings, default_port: int, found: CollectorRegistry, checks: Checks, name: str
) -> AsyncIterator[Endpoint | None]:
    """The endpoint on ``settings.metrics_port`` (``default_port`` if unset; none if 0).

    A port given explicitly that cannot be bound is a :class:`~aexec.errors.ConfigError`;
    the default port in use (a second process on one host) is a warning: that process
    runs without an endpoint."""
    port = settings.metrics_port
    if port == 0:
        yield None
        return
    endpoint = Endpoint(
        found,
        checks,
        host=settings.metrics_host,
        port=default_port if port is None else port,
        name=name,
    )
    try:
        await endpoint.__aenter__()
    except ConfigError as exc:
        if port is not None:
            raise
        log.warning("%s: %s; it runs without metrics and health checks", name, exc)
        yield None
        return
    try:
        yield endpoint
    finally:
        await endpoint.__aexit__(None, None, None)


__all__ = ["Depths", "coordinator_endpoint", "worker_endpoint"]
