"""What the contract suite cannot say about the PostgreSQL store: URLs, followers that
lose notifications, many writers at once.  (That it folds any event sequence into the same
rows as every other store is in the contract suite.)"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import aclosing

import asyncpg
import pytest

import aexec.store
from aexec.errors import ConfigError, StoreUnavailableError
from aexec.events import Event, EventKind
from aexec.plan import StepSpec, build
from aexec.store import RunRecord, Store
from aexec.store.postgres import PostgresStore, from_url
from aexec.types import ErrorInfo

K = EventKind
PLAN = build("p", [StepSpec("a", "add"), StepSpec("b", "add", deps=("a",))])
BOOM = ErrorInfo("ValueError", "boom", "Traceback ...\nValueError: boom\n", retryable=False)
WAIT = 10.0


def new_run(run_id: str, created_at: float = 1.0) -> RunRecord:
    return RunRecord(run_id, PLAN.pipeline, PLAN.digest, created_at=created_at)


# -- URLs (no server needed) ---------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_both_url_schemes_make_a_postgres_store(scheme: str) -> None:
    url = f"{scheme}://aexec:pw@db.example:5433/runs?sslmode=disable"
    store = aexec.store.from_url(url)
    assert isinstance(store, PostgresStore)
    assert store.dsn == url
    assert from_url(url).dsn == url


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///runs.db",
        "postgresql:/runs",
        "mysql://aexec:pw@host/db",
        "runs",
        "postgresql://aexec:pw@host:port/db",
    ],
)
def test_other_urls_are_a_config_error_that_shows_no_credentials(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        PostgresStore.from_url(url)
    assert "pw" not in str(info.value)


def test_the_password_never_shows_in_the_repr() -> None:
    store = PostgresStore("postgresql://aexec:s3cret@db.example:5433/runs?password=s3cret")
    assert repr(store) == "PostgresStore('aexec@db.example:5433/runs')"


# -- with a database -----------------------------------------------------------------------


@pytest.fixture
async def store(postgres_dsn: str) -> AsyncIterator[PostgresStore]:
    async with PostgresStore(postgres_dsn) as store:
        yield store


@pytest.mark.postgres
async def test_a_follower_reads_events_whose_notification_was_lost(
    postgres_dsn: str, store: PostgresStore
) -> None:
    submitted = await store.create_run(new_run("run-1"), PLAN)
    follower = asyncio.create_task(collect(store, "run-1", after=submitted.seq))
    conn = await asyncpg.connect(postgres_dsn)
    try:  # written behind the store's back: no NOTIFY
        await conn.execute(
            "INSERT INTO aexec_events (run_id, ts, kind) VALUES "
            "('run-1', 1, 'run_started'), ('run-1', 2, 'run_succeeded')"
        )
        await conn.execute("UPDATE aexec_runs SET status = 'succeeded' WHERE run_id = 'run-1'")
    finally:
        await conn.close()
    assert [e.kind for e in await follower] == [K.RUN_STARTED, K.RUN_SUCCEEDED]


async def collect(store: Store, run_id: str, after: int = 0) -> list[Event]:
    async with asyncio.timeout(WAIT), aclosing(store.follow(run_id, after=after)) as events:
        return [event async for event in events]


@pytest.mark.postgres
async def test_many_writers_at_once_never_deadlock_and_a_follower_misses_nothing(
    postgres_dsn: str, store: PostgresStore
) -> None:
    run_ids = [f"run-{i}" for i in range(4)]
    for run_id in run_ids:
        await store.create_run(new_run(run_id), PLAN)
    await store.acquire_runs("c1", 30.0)
    rng = random.Random(7)
    async with PostgresStore(postgres_dsn) as other:
        follower = asyncio.create_task(collect(store, "run-0"))

        async def writer(s: PostgresStore, n: int) -> None:
            for i in range(20):
                batch = [
                    Event(K.STEP_PROGRESS, run_id, float(i), "a", data={"n": n})
                    for run_id in rng.sample(run_ids, len(run_ids))
                    for _ in range(2)
                ]
                await s.append(batch)
                if i % 5 == 0:
                    await s.renew_leases("c1", 30.0)
                    await s.release_runs("c1", rng.sample(run_ids, 2))
                    await s.acquire_runs("c1", 30.0)

        try:
            async with asyncio.timeout(60):
                await asyncio.gather(*[writer(s, n) for n in range(6) for s in (store, other)])
            await store.append([Event(K.RUN_SUCCEEDED, "run-0", 99.0)])
            seen = await follower
        finally:
            follower.cancel()
    logged = await store.get_events("run-0")
    assert len(logged) == 1 + 12 * 20 * 2 + 1  # run_submitted, progress, run_succeeded
    assert [e.seq for e in seen] == [e.seq for e in logged]


@pytest.mark.postgres
async def test_a_store_that_cannot_connect_says_so_as_unavailable(postgres_url: str) -> None:
    closed_port = PostgresStore("postgresql://postgres@127.0.0.1:9/nothing", timeout=2.0)
    with pytest.raises(StoreUnavailableError, match=r"127\.0\.0\.1:9/nothing"):
        await closed_port.open()
