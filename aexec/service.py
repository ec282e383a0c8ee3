"""Long-lived processes and worker control, composed from settings: what ``aexec worker`` and
``aexec coordinator`` run.

This is composition, beside :mod:`aexec.executor`: it loads user code, builds adapters from
the configured URLs (with the ports' ``from_url``) and owns their lifetimes.  It configures
no logging and installs no signal handler: the caller sets ``stop`` (the CLI does on
SIGTERM and SIGINT).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aexec.objects
import aexec.transport
from aexec.config import Settings
from aexec.dsl import StepDef
from aexec.errors import ConfigError, LoadError
from aexec.executor import Executor
from aexec.loader import find_steps, load_module_or_file
from aexec.messages import WorkerInfo
from aexec.metrics import CoordinatorMetrics, WorkerMetrics
from aexec.redaction import redact
from aexec.transport import DeadLetter, Replay, Transport
from aexec.wire import versioned
from aexec.worker import Worker, WorkerConfig, default_worker_name

log = logging.getLogger(__name__)

# How long a command waits for the broker to answer when it starts, unless the broker URL
# says otherwise (``?connect_timeout=SECONDS``): a wrong address fails fast.
CONNECT_TIMEOUT = 5.0


async def run_worker(
    settings: Settings,
    modules: Sequence[str],
    *,
    queues: Sequence[str] | None,
    name: str | None,
    pool: str,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
) -> int:
    """Serve the steps defined in ``modules`` until ``stop`` is set or the worker is asked to
    terminate; then let in-flight steps finish, deliver their completions and return 0.

    ``queues`` defaults to every queue named by the loaded steps; ``settings`` gives the
    worker's knobs (:meth:`~aexec.worker.WorkerConfig.from_settings`).  ``ready`` (if given) is set
    once the worker consumes its queues: a :class:`~aexec.errors.TransportError` raised before
    that means the broker could not be reached at all.
    """
    require_broker(settings, "worker start")
    loaded = [load_module_or_file(spec) for spec in modules]
    steps = find_steps(loaded)
    if not steps:
        raise LoadError(
            f"{', '.join(modules)}: no step to serve (decorate a function with @step; "
            "remote_step declarations have no code to run)"
        )
    served = served_queues(steps.values(), queues)
    config = WorkerConfig.from_settings(
        settings, name=name or default_worker_name(), pool=pool, modules=tuple(modules)
    )
    ready = ready or asyncio.Event()
    from aexec.ops import worker_endpoint  # the metrics server: only a service starts one

    metrics = WorkerMetrics()
    started: list[Worker] = []
    async with contextlib.AsyncExitStack() as stack:
        transport = await stack.enter_async_context(_opened_transport(settings))
        # Once the broker answers (an unreachable one is the one error a start reports),
        # and before the worker: it answers /healthz while the worker drains.
        await stack.enter_async_context(
            worker_endpoint(settings, lambda: started[0] if started else None, metrics, ready=ready)
        )
        objects = aexec.objects.from_url(settings.objects_url)
        await objects.open()
        stack.push_async_callback(objects.close)
        # Exits run in reverse: the worker drains (in-flight steps finish and their
        # completions are published) before the object store and the transport close.
        worker = await stack.enter_async_context(Worker(transport, objects, steps, config))
        worker.metrics = metrics
        started.append(worker)
        for queue in served:
            await worker.serve(queue)
        await worker.listen_for_control()
        log.info(
            "worker %s ready: queues %s; steps %s",
            worker.name,
            ",".join(served),
            ",".join(worker.step_names),
        )
        ready.set()
        await _first_set(stop, worker.terminated)
        log.info(
            "worker %s stopping: %d steps in flight finish first", worker.name, worker.in_flight
        )
        await worker.drain()
    log.info("worker %s stopped", config.name)
    return 0


def served_queues(steps: Iterable[StepDef[Any, Any]], queues: Sequence[str] | None) -> list[str]:
    """The step queues a worker serving ``steps`` consumes: ``queues`` (default: every queue
    its steps name), and the versioned queue of each of its versioned steps on one of them
    (a pipeline asking for that version sends there)."""
    plain = set(queues) if queues else {s.queue for s in steps}
    routes = {versioned(s.queue, s.version) for s in steps if s.version and s.queue in plain}
    return sorted(plain | routes)


async def run_coordinator(
    settings: Settings, *, stop: asyncio.Event, ready: asyncio.Event | None = None
) -> int:
    """Serve runs submitted by library clients through the broker until ``stop`` is set;
    then let the runs in flight finish (for a bounded time) and return 0."""
    require_broker(settings, "coordinator")
    log.info(
        "coordinator starting: store %s, objects %s",
        redact(settings.store_url),
        redact(settings.objects_url),
    )
    ready = ready or asyncio.Event()
    from aexec.ops import coordinator_endpoint  # the metrics server: only a service starts one

    metrics = CoordinatorMetrics()
    async with Executor(settings, metrics=metrics) as ex:
        await ex.start(service=True)  # an unreachable broker fails here, before anything
        async with coordinator_endpoint(settings, ex, metrics, ready=ready, stop=stop):
            await ex.serve(stop, ready=ready)
    log.info("coordinator stopped")
    return 0


async def find_workers(settings: Settings, *, wait: float) -> list[WorkerInfo]:
    """The live workers that answer a ping within ``wait`` seconds, by name."""
    from aexec.control import list_workers

    require_broker(settings, "worker list")
    async with _opened_transport(settings) as transport:
        return await list_workers(transport, wait=wait)


async def terminate(settings: Settings, name: str | None) -> None:
    """Ask worker ``name`` (every worker, for None) to finish its in-flight steps and exit."""
    from aexec.control import terminate_workers

    require_broker(settings, "worker terminate")
    async with _opened_transport(settings) as transport:
        await terminate_workers(transport, name)


async def dead_letters(settings: Settings, *, limit: int | None) -> list[DeadLetter]:
    """The dead letters waiting on the broker (at most ``limit``), oldest first; they stay."""
    require_broker(settings, "dlq list")
    async with _opened_transport(settings) as transport:
        return await transport.dead_letters(limit=limit)


async def replay_dead_letters(settings: Settings, ids: Collection[str] | None) -> list[Replay]:
    """Publish dead letters ``ids`` (every one for None) back to the queues they came from."""
    require_broker(settings, "dlq replay")
    async with _opened_transport(settings) as transport:
        return await transport.replay_dead_letters(ids)


def with_connect_timeout(settings: Settings, seconds: float = CONNECT_TIMEOUT) -> Settings:
    """``settings`` whose AMQP broker URL carries ``connect_timeout=seconds``, unless it names
    one already (or there is no AMQP broker)."""
    broker = settings.broker
    if broker is None or urlsplit(broker).scheme not in ("amqp", "amqps"):
        return settings
    parts = urlsplit(broker)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "connect_timeout" for key, _ in query):
        return settings
    query.append(("connect_timeout", f"{seconds:g}"))
    return settings.merged({"broker": parts._replace(query=urlencode(query)).geturl()})


def require_broker(settings: Settings, command: str) -> None:
    if settings.embedded:
        raise ConfigError(f"{command} needs a broker: pass --broker amqp://... or set AEXEC_BROKER")


@contextlib.asynccontextmanager
async def _opened_transport(settings: Settings) -> AsyncIterator[Transport]:
    transport = aexec.transport.from_url(
        settings.broker, prefix=settings.queue_prefix, secret=settings.secret
    )
    await transport.open()
    try:
        yield transport
    finally:
        await transport.close()


async def _first_set(*events: asyncio.Event) -> None:
    """Return once any of ``events`` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.wait(waiters)


__all__ = [
    "CONNECT_TIMEOUT",
    "dead_letters",
    "find_workers",
    "replay_dead_letters",
    "require_broker",
    "run_coordinator",
    "run_worker",
    "terminate",
    "with_connect_timeout",
]
