"""Limits, admission and rerun over RabbitMQ and PostgreSQL: two coordinators on one
database share a rate limit; a per-key limit holds across runs; a rerun from failure
reuses outputs; a takeover rebuilds limits from the store."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest

import aexec.transport
from aexec import pipeline, step
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.objects.memory import MemoryObjectStore
from aexec.store.postgres import PostgresStore
from aexec.transport import Transport
from aexec.types import RunStatus, StepStatus
from aexec.worker import Worker

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

WAIT = 60.0
started: list[tuple[str, float]] = []
running: Counter[str] = Counter()
peak: Counter[str] = Counter()
broken: set[str] = set()


@step(queue="limits", rate_limit="4/s")
async def ping(i: int) -> int:
    started.append(("ping", time.monotonic()))
    return i


@pipeline
def pings(n: int = 6) -> object:
    return [ping.alias(f"p{i}")(i) for i in range(n)]


@step(queue="limits", concurrency=2, limit_key="tenant")
async def work(tenant: str, i: int) -> int:
    running[tenant] += 1
    peak[tenant] = max(peak[tenant], running[tenant])
    try:
        await asyncio.sleep(0.02)
    finally:
        running[tenant] -= 1
    if tenant in broken and i % 2:
        raise RuntimeError(f"{tenant} is broken for odd steps")
    return i


@pipeline
def tenant_work(tenant: str, n: int = 8) -> object:
    return [work.alias(f"w{i}")(tenant, i) for i in range(n)]


@pytest.fixture
async def transport(amqp_url: str, amqp_prefix: str) -> AsyncIterator[Transport]:
    t = aexec.transport.from_url(amqp_url, prefix=amqp_prefix)
    await t.open()
    try:
        yield t
    finally:
        await t.close()


@pytest.fixture(autouse=True)
def fresh() -> None:
    started.clear()
    running.clear()
    peak.clear()
    broken.clear()


async def test_a_rate_limit_holds_across_two_coordinators_sharing_a_database(
    postgres_dsn: str, transport: Transport
) -> None:
    steps = {**pings.compile().steps}
    async with (
        asyncio.timeout(WAIT),
        PostgresStore(postgres_dsn) as store,
        Worker(transport, MemoryObjectStore(), steps) as worker,
        Coordinator(transport, store, CoordinatorConfig(id="a")) as a,
        Coordinator(transport, store, CoordinatorConfig(id="b")) as b,
    ):
        await worker.serve("limits")
        runs = [await a.submit(pings.compile().plan), await b.submit(pings.compile().plan)]
        assert [await run.done for run in runs] == [RunStatus.SUCCEEDED] * 2
    times = sorted(t for _, t in started)
    assert len(times) == 12
    # Together, as one token bucket of 4 a second with a burst of 4: in any window of T
    # seconds at most 4 + 4T start, so 9 starts span at least a second.
    for k in range(len(times) - 8):
        assert times[k + 8] - times[k] >= 1.0 - 0.05, (k, times)


async def test_a_per_key_limit_holds_across_runs_and_a_rerun_reuses_outputs(
    postgres_dsn: str, transport: Transport
) -> None:
    compiled = {t: tenant_work.compile(tenant=t) for t in ("acme", "bolt")}
    async with (
        asyncio.timeout(WAIT),
        PostgresStore(postgres_dsn) as store,
        Worker(transport, MemoryObjectStore(), compiled["acme"].steps) as worker,
        Coordinator(transport, store, CoordinatorConfig(max_concurrent_runs=3)) as coordinator,
    ):
        await worker.serve("limits")
        broken.add("bolt")
        runs = [await coordinator.submit(c.plan) for c in (*compiled.values(), compiled["acme"])]
        statuses = [await run.done for run in runs]
        assert statuses == [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.SUCCEEDED]
        assert peak == Counter({"acme": 2, "bolt": 2})  # two acme runs shared acme's 2

        broken.clear()
        again = await coordinator.submit(
            compiled["bolt"].plan, parent=runs[1].run_id, from_failure=True
        )
        assert await again.done is RunStatus.SUCCEEDED
        rows = {r.key: r for r in await store.get_steps(again.run_id)}
        record = await store.get_run(again.run_id)
    assert record is not None and record.parent == runs[1].run_id
    assert all(r.status is StepStatus.SUCCEEDED for r in rows.values())
    # The even steps succeeded the first time: reused (no attempt); the odd ones ran.
    assert {k: r.attempts for k, r in rows.items()} == {f"w{i}": i % 2 for i in range(8)}
