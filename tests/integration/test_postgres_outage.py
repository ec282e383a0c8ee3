"""The PostgreSQL store through database outages, made with a TCP proxy: a call during an
outage fails fast with StoreUnavailableError (never hangs), calls succeed again once the
database is back (the pool reconnects), and a failed append leaves nothing behind."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from urllib.parse import urlsplit

import asyncpg
import pytest

from aexec.errors import StoreUnavailableError
from aexec.events import Event, EventKind
from aexec.plan import StepSpec, build
from aexec.store import RunRecord
from aexec.store.postgres import PostgresStore
from aexec.types import RunStatus, StepStatus
from benchmarks.faults.tcpproxy import TcpProxy
from tests.plugins.postgres import with_address

pytestmark = pytest.mark.postgres

K = EventKind
PLAN = build("p", [StepSpec("a", "add"), StepSpec("b", "add", deps=("a",))])
TIMEOUT = 0.5  # the stores' call timeout in these tests
WAIT = 10.0  # the bound of every wait in these tests: a hang fails, it does not stall


def ev(kind: EventKind, step: str | None = None, attempt: int = 0, **data: object) -> Event:
    return Event(kind, "run-1", 100.0, step=step, attempt=attempt, data=dict(data))


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[TcpProxy]:
    server = urlsplit(postgres_url)
    async with TcpProxy(server.hostname or "localhost", server.port or 5432) as proxy:
        yield proxy


@pytest.fixture
async def direct(postgres_dsn: str) -> AsyncIterator[PostgresStore]:
    """A store that does not go through the proxy: the truth, whatever the outage."""
    async with PostgresStore(postgres_dsn) as store:
        await store.create_run(RunRecord("run-1", "p", PLAN.digest, created_at=1.0), PLAN)
        await store.append([ev(K.RUN_STARTED)])
        yield store


@pytest.fixture
async def proxied(
    postgres_dsn: str, proxy: TcpProxy, direct: PostgresStore
) -> AsyncIterator[PostgresStore]:
    dsn = with_address(postgres_dsn, "127.0.0.1", proxy.port)
    async with PostgresStore(dsn, timeout=TIMEOUT, max_size=4) as store:
        yield store


async def fails_fast(call: object) -> float:
    """Await ``call``; it must raise StoreUnavailableError within the timeout (and a
    margin).  Returns the seconds it took."""
    assert asyncio.iscoroutine(call)
    started = time.monotonic()
    async with asyncio.timeout(WAIT):
        with pytest.raises(StoreUnavailableError):
            await call
    elapsed = time.monotonic() - started
    assert elapsed < TIMEOUT + 1.0
    return elapsed


async def test_a_call_while_the_database_is_down_fails_fast_and_works_once_it_is_back(
    proxy: TcpProxy, proxied: PostgresStore
) -> None:
    assert (await proxied.get_run("run-1")) is not None
    proxy.refuse()
    proxy.cut()
    await fails_fast(proxied.get_run("run-1"))
    await fails_fast(proxied.append([ev(K.STEP_PROGRESS, "a")]))
    proxy.restore()
    run = await proxied.get_run("run-1")
    assert run is not None and run.status is RunStatus.RUNNING
    assert [e.kind for e in await proxied.get_events("run-1")] == [K.RUN_SUBMITTED, K.RUN_STARTED]


async def test_a_call_into_a_black_hole_fails_within_the_timeout(
    proxy: TcpProxy, proxied: PostgresStore
) -> None:
    assert (await proxied.get_run("run-1")) is not None
    proxy.blackhole()
    elapsed = await fails_fast(proxied.get_steps("run-1"))  # on a pooled connection
    assert elapsed >= TIMEOUT * 0.9
    await fails_fast(proxied.append([ev(K.STEP_PROGRESS, "a")]))  # connecting anew
    await fails_fast(proxied.acquire_runs("c1", 30.0))
    proxy.restore()
    assert [s.key for s in await proxied.get_steps("run-1")] == ["a", "b"]
    await proxied.append([ev(K.STEP_PROGRESS, "a")])
    logged = [e.kind for e in await proxied.get_events("run-1")]
    assert logged == [K.RUN_SUBMITTED, K.RUN_STARTED, K.STEP_PROGRESS]


async def test_an_append_cut_off_half_way_leaves_nothing_applied(
    postgres_dsn: str, proxy: TcpProxy, proxied: PostgresStore, direct: PostgresStore
) -> None:
    batch = [ev(K.STEP_PROGRESS, "a"), ev(K.STEP_DISPATCHED, "a", 1), ev(K.RUN_CANCELLED)]
    patient = PostgresStore(with_address(postgres_dsn, "127.0.0.1", proxy.port), timeout=WAIT)
    blocker = await asyncpg.connect(postgres_dsn)
    try:
        # Hold step a's row: the append logs its events, then waits to update the step.
        holding = blocker.transaction()
        await holding.start()
        await blocker.execute(
            "SELECT 1 FROM aexec_steps WHERE run_id = 'run-1' AND key = 'a' FOR UPDATE"
        )
        async with patient:
            append = asyncio.create_task(patient.append(batch))
            await waiting_for_a_lock(blocker)
            proxy.cut()
            async with asyncio.timeout(WAIT):
                with pytest.raises(StoreUnavailableError):
                    await append
        await holding.rollback()
        await backends_gone(blocker)
    finally:
        await blocker.close()
    assert [e.kind for e in await direct.get_events("run-1")] == [K.RUN_SUBMITTED, K.RUN_STARTED]
    assert [s.status for s in await direct.get_steps("run-1")] == [StepStatus.PENDING] * 2
    run = await direct.get_run("run-1")
    assert run is not None and run.status is RunStatus.RUNNING
    assert [e.seq for e in batch] == [0, 0, 0]
    await proxied.append(batch)  # the retry, once the database is back
    logged = await direct.get_events("run-1")
    assert [e.kind for e in logged] == [K.RUN_SUBMITTED, K.RUN_STARTED, *[e.kind for e in batch]]
    assert (await direct.get_run("run-1")).status is RunStatus.CANCELLED  # type: ignore[union-attr]


async def follower(store: PostgresStore, seen: asyncio.Queue[Event]) -> None:
    async with aclosing(store.follow("run-1")) as events:
        async for event in events:
            await seen.put(event)


async def test_a_follower_fails_fast_when_the_database_goes_away(
    proxy: TcpProxy, proxied: PostgresStore
) -> None:
    seen: asyncio.Queue[Event] = asyncio.Queue()
    task = asyncio.create_task(follower(proxied, seen))
    try:
        async with asyncio.timeout(WAIT):
            assert (await seen.get()).kind is K.RUN_SUBMITTED
            assert (await seen.get()).kind is K.RUN_STARTED
            proxy.refuse()
            proxy.cut()
            with pytest.raises(StoreUnavailableError):
                await task
    finally:
        task.cancel()


async def test_a_follower_carries_on_across_a_dropped_connection(
    proxy: TcpProxy, proxied: PostgresStore, direct: PostgresStore
) -> None:
    seen: asyncio.Queue[Event] = asyncio.Queue()
    task = asyncio.create_task(follower(proxied, seen))
    try:
        async with asyncio.timeout(WAIT):
            assert (await seen.get()).kind is K.RUN_SUBMITTED
            assert (await seen.get()).kind is K.RUN_STARTED
            accepted = proxy.accepted
            proxy.cut()  # the LISTEN connection and the pool's go; the database stays up
            await direct.append([ev(K.STEP_DISPATCHED, "a", 1)])
            assert (await seen.get()).kind is K.STEP_DISPATCHED
            await direct.append([ev(K.RUN_SUCCEEDED)])
            assert (await seen.get()).kind is K.RUN_SUCCEEDED
            await task
        assert proxy.accepted > accepted  # it did reconnect
    finally:
        task.cancel()


async def test_opening_a_store_on_a_database_that_is_down_fails_fast_without_the_password(
    postgres_dsn: str, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    parts = urlsplit(postgres_dsn)
    secret = "s3cret-Pa55word"
    dsn = f"postgresql://{parts.username or 'postgres'}:{secret}@127.0.0.1:{proxy.port}{parts.path}"
    proxy.refuse()
    store = PostgresStore(dsn, timeout=TIMEOUT)
    caplog.set_level(logging.DEBUG)
    async with asyncio.timeout(WAIT):
        with pytest.raises(StoreUnavailableError) as info:
            await store.open()
    assert f"127.0.0.1:{proxy.port}{parts.path}" in str(info.value)
    assert secret not in str(info.value)
    assert secret not in repr(store)
    assert secret not in caplog.text
    proxy.restore()
    async with store:
        assert await store.get_run("run-1") is None  # an empty (migrated) database


async def waiting_for_a_lock(conn: asyncpg.Connection) -> None:
    """Until another backend of this database waits for a lock (bounded)."""
    async with asyncio.timeout(WAIT):
        for _ in range(int(WAIT / 0.01)):
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if waiting:
                return
            await asyncio.sleep(0.01)  # poll interval of a bounded wait
        raise AssertionError("the append never waited for the row lock")


async def backends_gone(conn: asyncpg.Connection) -> None:
    """Until no other client backend of this database is left but idle pool connections:
    the cut-off append's backend has noticed and rolled back (bounded)."""
    async with asyncio.timeout(WAIT):
        for _ in range(int(WAIT / 0.01)):
            busy = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
                "AND state <> 'idle'"
            )
            if not busy:
                return
            await asyncio.sleep(0.01)  # poll interval of a bounded wait
        raise AssertionError("the cut-off append's backend never went away")
