"""A run through a PostgreSQL outage: it stalls, it does not fail or lose anything, and it
finishes once the database is back (the outage made by a TCP proxy in front of it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from aexec import pipeline, step
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.events import EventKind
from aexec.objects.memory import MemoryObjectStore
from aexec.store.postgres import PostgresStore
from aexec.testing import wait_for_event
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus, StepStatus
from aexec.worker import Worker
from benchmarks.faults.tcpproxy import TcpProxy
from tests.plugins.postgres import with_address

pytestmark = pytest.mark.postgres


@step
async def tick(previous: int) -> int:
    await asyncio.sleep(0.01)
    return previous + 1


@pipeline
def chain(n: int = 40) -> object:
    value = tick.alias("t0")(0)
    for i in range(1, n):
        value = tick.alias(f"t{i}")(value)
    return value


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[TcpProxy]:
    server = urlsplit(postgres_url)
    async with TcpProxy(server.hostname or "localhost", server.port or 5432) as proxy:
        yield proxy


async def test_a_run_stalls_through_a_database_outage_and_then_finishes(
    postgres_dsn: str, proxy: TcpProxy
) -> None:
    compiled = chain.compile()
    transport = MemoryTransport()
    await transport.open()
    proxied = PostgresStore(with_address(postgres_dsn, "127.0.0.1", proxy.port), timeout=0.5)
    async with (
        PostgresStore(postgres_dsn) as truth,
        proxied,
        Coordinator(transport, proxied, CoordinatorConfig(retry_backoff_max=0.2)) as coordinator,
        Worker(transport, MemoryObjectStore(), compiled.steps) as worker,
    ):
        await worker.serve("default")
        run = await coordinator.submit(compiled.plan)
        await wait_for_event(truth.follow(run.run_id), EventKind.STEP_SUCCEEDED, step="t10")
        proxy.cut()
        proxy.refuse()
        await asyncio.sleep(1.5)  # the outage: several store calls time out meanwhile
        record = await truth.get_run(run.run_id)
        assert record is not None and record.status is RunStatus.RUNNING  # stalled, not failed
        assert not run.done.done()
        proxy.restore()
        assert await asyncio.wait_for(run.done, 30) is RunStatus.SUCCEEDED
        record = await truth.get_run(run.run_id)
        assert record is not None and record.status is RunStatus.SUCCEEDED
        steps = await truth.get_steps(run.run_id)
        assert all(s.status is StepStatus.SUCCEEDED and s.attempts == 1 for s in steps)
        events = await truth.get_events(run.run_id)
        # One success per step, of attempt 1.  (Were a COMMIT's acknowledgement lost in the
        # cut, the retried batch could log its events twice — with the same attempt, and the
        # rows, compare-and-set, unchanged.)
        succeeded = {(e.step, e.attempt) for e in events if e.kind is EventKind.STEP_SUCCEEDED}
        assert succeeded == {(s.key, 1) for s in steps}
    await transport.close()
