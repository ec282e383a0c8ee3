"""``python -m benchmarks --metrics``: aexec with its metrics on, as production runs it;
``python -m benchmarks.metrics``: the CPU the metrics cost a coordinator, measured alone.

Every worker and coordinator subprocess serves ``/metrics`` on a port of its own, and the
coordinator embedded in the benchmark process fills a registry of its own; a
:class:`Scraper` reads them all every second while a workload runs (Prometheus scrapes
every 15 s by default: this is the harsher case).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from aexec.batch import ActiveRun
from aexec.executor import Executor
from aexec.exposition import CoordinatorCollector, registry
from aexec.metrics import CoordinatorMetrics

INTERVAL = 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def in_process_registry(executor: Executor, metrics: CoordinatorMetrics) -> CollectorRegistry:
    """The registry an embedded coordinator's endpoint would serve."""

    def runs() -> dict[str, ActiveRun]:
        coordinator = executor.coordinator
        return {} if coordinator is None else coordinator.runs

    return registry(CoordinatorCollector(metrics, runs, dict))


class Scraper:
    """Scrapes ``ports`` (over HTTP) and ``local`` (in process) every second."""

    def __init__(self, ports: Sequence[int], local: CollectorRegistry | None) -> None:
        self.ports = list(ports)
        self.local = local
        self.scrapes = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Scraper:
        self._task = asyncio.create_task(self._run(), name="bench-metrics-scraper")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            if self.local is not None:
                generate_latest(self.local)
            for port in self.ports:
                with contextlib.suppress(OSError):
                    await _get(port)
            self.scrapes += 1
            await asyncio.sleep(INTERVAL)


async def _get(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# -- python -m benchmarks.metrics: what the metrics cost the coordinator, in CPU ----------------


def measure(runs: int = 200, steps: int = 50, repeat: int = 5) -> dict[str, float]:
    """CPU seconds the coordinator spends on metrics for ``runs`` runs of ``steps``
    independent steps (the many_runs workload): counting every event it records, and one
    scrape with every run in flight (predicted demand over every step)."""
    import time as clock

    from aexec.events import Event, EventKind
    from aexec.plan import StepSpec, build
    from aexec.scheduling import RunState

    plan = build("bench", [StepSpec(key=f"s{i}", name="noop") for i in range(steps)])
    active: dict[str, ActiveRun] = {}

    async def build_runs() -> None:
        for r in range(runs):
            state = RunState(plan)
            state.start()
            active[f"r{r}"] = ActiveRun(f"r{r}", plan, 0, state)

    asyncio.run(build_runs())
    events = [
        Event(
            kind,
            run_id,
            2.0,
            f"s{i}",
            1,
            {"started_at": 1.0} if kind.value != "step_dispatched" else {},
        )
        for run_id in active
        for i in range(steps)
        for kind in (EventKind.STEP_DISPATCHED, EventKind.STEP_STARTED, EventKind.STEP_SUCCEEDED)
    ]
    record: list[float] = []
    scrape: list[float] = []
    for _ in range(repeat):
        metrics = CoordinatorMetrics()
        t0 = clock.process_time()
        metrics.recorded(events, active)
        record.append(clock.process_time() - t0)
        found = registry(CoordinatorCollector(metrics, lambda: active, dict))
        t0 = clock.process_time()
        generate_latest(found)
        scrape.append(clock.process_time() - t0)
    return {
        "events": float(len(events)),
        "record_seconds": min(record),
        "record_us_per_event": min(record) / len(events) * 1e6,
        "scrape_seconds": min(scrape),
    }


def main() -> None:
    found = measure()
    print(
        f"{found['events']:.0f} events (200 runs x 50 steps: dispatched, started, succeeded): "
        f"counted in {found['record_seconds'] * 1000:.1f} ms CPU "
        f"({found['record_us_per_event']:.2f} us/event); one scrape with all 200 runs in "
        f"flight (10,000 steps for predicted demand): {found['scrape_seconds'] * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
