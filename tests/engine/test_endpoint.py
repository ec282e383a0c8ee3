"""The operations endpoint over real HTTP: liveness, readiness with its reason, metrics, and
requests it refuses; a worker's readiness follows its consuming."""

from __future__ import annotations

import asyncio
import socket

import pytest

from aexec import step
from aexec.config import Settings
from aexec.endpoint import Checks, Endpoint
from aexec.errors import ConfigError
from aexec.exposition import registry
from aexec.metrics import WorkerMetrics
from aexec.objects.memory import MemoryObjectStore
from aexec.ops import worker_endpoint
from aexec.transport.memory import MemoryTransport
from aexec.worker import Worker, WorkerConfig
from tests.endpoints import free_port, get


@step(queue="q")
async def noop() -> None:
    return None


async def ready_when(flag: list[str | None]) -> str | None:
    return flag[0]


async def test_health_answers_follow_the_checks_and_name_the_reason() -> None:
    alive: list[str | None] = [None]
    ready: list[str | None] = ["starting"]
    checks = Checks(lambda: alive[0], lambda: ready_when(ready))
    async with Endpoint(registry(), checks, host="127.0.0.1", port=0, name="test") as endpoint:
        port = endpoint.port
        assert await get(port, "/healthz") == (200, "ok\n")
        assert await get(port, "/readyz") == (503, "starting\n")
        ready[0] = None
        assert await get(port, "/readyz?verbose=1") == (200, "ready\n")
        alive[0] = "the worker failed"
        assert await get(port, "/healthz") == (503, "the worker failed\n")
        status, body = await get(port, "/metrics")
        assert status == 200 and body == ""  # an empty registry: nothing of the process's


async def test_a_check_that_hangs_or_raises_is_an_error_answer_and_the_endpoint_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("aexec.endpoint.CHECK_TIMEOUT", 0.1)

    async def hangs() -> str | None:
        await asyncio.Event().wait()
        return None

    def raises() -> str | None:
        raise RuntimeError("a bug in a check")

    async with Endpoint(
        registry(), Checks(raises, hangs), host="127.0.0.1", port=0, name="test"
    ) as endpoint:
        assert await get(endpoint.port, "/readyz") == (503, "no answer within 0.1 s\n")
        assert await get(endpoint.port, "/healthz") == (500, "RuntimeError: a bug in a check\n")
        assert (await get(endpoint.port, "/readyz"))[0] == 503  # still serving


async def test_bad_requests_are_refused_with_a_status() -> None:
    checks = Checks(lambda: None, lambda: ready_when([None]))
    async with Endpoint(registry(), checks, host="127.0.0.1", port=0, name="test") as endpoint:
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        writer.write(b"POST /metrics HTTP/1.1\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 405 ")
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        writer.write(b"GET /" + b"x" * 10_000 + b" HTTP/1.1\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        writer.write(b"HEAD /healthz HTTP/1.1\r\n\r\n")
        response = await reader.read()
        assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(b"\r\n\r\n")
        writer.close()


async def test_a_port_given_explicitly_that_is_taken_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(metrics_port=port, metrics_host="127.0.0.1")
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            async with worker_endpoint(
                settings, lambda: None, WorkerMetrics(), ready=asyncio.Event()
            ):
                pass


async def test_metrics_port_zero_serves_nothing() -> None:
    async with worker_endpoint(
        Settings(metrics_port=0), lambda: None, WorkerMetrics(), ready=asyncio.Event()
    ) as endpoint:
        assert endpoint is None


async def test_a_worker_is_ready_while_it_consumes_and_not_once_it_drains() -> None:
    transport = MemoryTransport()
    await transport.open()
    ready = asyncio.Event()
    workers: list[Worker] = []
    port = free_port()
    settings = Settings(metrics_port=port, metrics_host="127.0.0.1")
    async with worker_endpoint(
        settings, lambda: workers[0] if workers else None, WorkerMetrics(), ready=ready
    ):
        assert await get(port, "/readyz") == (503, "starting\n")
        assert await get(port, "/healthz") == (200, "ok\n")
        async with Worker(
            transport, MemoryObjectStore(), {"noop": noop}, WorkerConfig(name="w")
        ) as worker:
            workers.append(worker)
            await worker.serve("q")
            ready.set()
            assert await get(port, "/readyz") == (200, "ready\n")
            await worker.stop_consuming()
            assert await get(port, "/readyz") == (503, "not consuming: draining or stopped\n")
            assert await get(port, "/healthz") == (200, "ok\n")
    await transport.close()
