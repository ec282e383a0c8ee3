"""``python -m benchmarks --metrics``: aexec with its metrics on, as production runs it.

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
