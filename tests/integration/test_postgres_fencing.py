"""Leases, fencing and poison on a real PostgreSQL, under real concurrency: submissions
racing lease renewals orphan no run; a coordinator cut off from the database for longer
than its lease cannot change the runs another one took over; a NUL character in a step's
error or a worker's name fails nothing but that step."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

import aexec
from aexec import pipeline, step
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.events import EventKind
from aexec.objects.memory import MemoryObjectStore
from aexec.store.postgres import PostgresStore
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus, StepStatus
from aexec.worker import Worker, WorkerConfig
from benchmarks.faults.tcpproxy import TcpProxy
from tests.plugins.postgres import with_address

pytestmark = pytest.mark.postgres

WAIT = 60.0


@step
async def add(x: int, y: int) -> int:
    return x + y


@step
async def broken(text: str) -> str:
    raise ValueError(f"cannot take {text}")


@pipeline
def chain() -> object:
    return add.alias("c")(add.alias("b")(add.alias("a")(1, 2), 3), 4)


@pipeline
def nul() -> object:
    return broken("a \x00 byte")


@pytest.fixture
async def transport() -> AsyncIterator[MemoryTransport]:
    t = MemoryTransport()
    await t.open()
    yield t
    await t.close()


async def test_submissions_racing_lease_renewals_orphan_no_run(
    postgres_dsn: str, transport: MemoryTransport
) -> None:
    compiled = chain.compile()
    async with (
        PostgresStore(postgres_dsn, max_size=20) as store,
        Worker(transport, MemoryObjectStore(), compiled.steps) as worker,
        # A 0.3 s lease: renewals every 0.1 s, under way while runs are being created.
        Coordinator(transport, store, CoordinatorConfig(lease=0.3)) as coordinator,
    ):
        await worker.serve("default")
        runs = await asyncio.gather(*[coordinator.submit(compiled.plan) for _ in range(240)])
        async with asyncio.timeout(WAIT):
            statuses = await asyncio.gather(*[asyncio.shield(run.done) for run in runs])
    assert Counter(statuses) == {RunStatus.SUCCEEDED: 240}


async def test_a_coordinator_cut_off_past_its_lease_cannot_change_runs_taken_over(
    postgres_url: str, postgres_dsn: str, transport: MemoryTransport
) -> None:
    executions: Counter[tuple[str, str]] = Counter()
    release = asyncio.Event()

    @step(name="slow_add")
    async def slow_add(x: int, y: int) -> int:
        context = aexec.current()
        executions[(context.run_id, context.step_key)] += 1
        await release.wait()
        return x + y

    @pipeline
    def slow() -> object:
        return slow_add.alias("second")(slow_add.alias("first")(1, 2), 3)

    compiled = slow.compile()
    server = urlsplit(postgres_url)
    fast = dict(lease=1.0, worker_timeout=30.0)
    quick = WorkerConfig(name="w", heartbeat_interval=0.1, ack_after=0.2)
    async with (
        TcpProxy(server.hostname or "localhost", server.port or 5432) as proxy,
        PostgresStore(postgres_dsn) as truth,
        PostgresStore(with_address(postgres_dsn, "127.0.0.1", proxy.port), timeout=0.5) as cut,
        Worker(transport, MemoryObjectStore(), compiled.steps, quick) as worker,
    ):
        await worker.serve("default")
        a = Coordinator(transport, cut, CoordinatorConfig(id="A", **fast))
        await a.__aenter__()
        try:
            runs = [await a.submit(compiled.plan) for _ in range(10)]
            for run in runs:  # every first step runs, acked, on worker w
                async for event in truth.follow(run.run_id):
                    if event.kind is EventKind.STEP_STARTED:
                        break
            proxy.blackhole()  # A can neither renew nor write: its leases lapse
            async with Coordinator(transport, truth, CoordinatorConfig(id="B", adopt=True, **fast)):
                for run in runs:
                    async for event in truth.follow(run.run_id):
                        if event.kind is EventKind.RUN_RESUMED:
                            break
                proxy.restore()  # A is back, and still believes it drives the runs
                release.set()  # the first steps complete: their replies reach A and B
                async with asyncio.timeout(WAIT):
                    for run in runs:
                        async for _ in truth.follow(run.run_id):
                            pass
                    for run in runs:  # A let go of every run it lost
                        with pytest.raises(Exception, match="taken over"):
                            await asyncio.shield(run.done)
        finally:
            release.set()
            await a.__aexit__(None, None, None)
        for run in runs:
            record = await truth.get_run(run.run_id)
            assert record is not None and (record.status, record.owner) == (
                RunStatus.SUCCEEDED,
                "B",
            )
            logged = await truth.get_events(run.run_id)
            outcomes = Counter(
                (e.step, e.attempt)
                for e in logged
                if e.kind in (EventKind.STEP_SUCCEEDED, EventKind.STEP_FAILED)
            )
            assert all(n == 1 for n in outcomes.values()), outcomes  # one outcome per attempt
            succeeded = Counter(e.step for e in logged if e.kind is EventKind.STEP_SUCCEEDED)
            assert succeeded == {"first": 1, "second": 1}  # dependents ran once
            assert executions[(run.run_id, "second")] == 1
            steps = {s.key: s for s in await truth.get_steps(run.run_id)}
            assert steps["first"].status is StepStatus.SUCCEEDED


async def test_a_nul_character_in_an_error_or_a_worker_name_fails_only_its_step(
    postgres_dsn: str, transport: MemoryTransport
) -> None:
    compiled, fine = nul.compile(), chain.compile()
    steps = {**compiled.steps, **fine.steps}
    async with (
        PostgresStore(postgres_dsn) as store,
        Worker(transport, MemoryObjectStore(), steps, WorkerConfig(name="w\x00rker")) as worker,
        Coordinator(transport, store) as coordinator,
    ):
        await worker.serve("default")
        async with asyncio.timeout(WAIT):
            bad = await coordinator.submit(compiled.plan)
            assert await asyncio.shield(bad.done) is RunStatus.FAILED
            good = await coordinator.submit(fine.plan)
            assert await asyncio.shield(good.done) is RunStatus.SUCCEEDED
    async with PostgresStore(postgres_dsn) as store:
        record = await store.get_run(bad.run_id)
        assert record is not None and record.error is not None
        assert record.error.startswith("failed steps: broken: ValueError: cannot take a ")
        (step_row,) = await store.get_steps(bad.run_id)
        assert step_row.status is StepStatus.FAILED
        assert step_row.error is not None and step_row.error.message == "cannot take a \x00 byte"
