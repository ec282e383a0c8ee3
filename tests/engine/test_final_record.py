"""A run's waiter gets the run's final record from the coordinator that ended it, as that
coordinator committed it, without reading the store back (issue 15: 2.5 ms per run with
PostgreSQL); a run it did not end with its own commit is read from the store as before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from aexec import pipeline, step
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.objects.memory import MemoryObjectStore
from aexec.run import LocalRun
from aexec.store import RunRecord, Store
from aexec.store.memory import MemoryStore
from aexec.store.postgres import PostgresStore
from aexec.store.sqlite import SqliteStore
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus
from aexec.worker import Worker, WorkerConfig

WAIT = 10.0


def reading(base: type[Store]) -> type[Store]:
    """``base``, counting the run records read back (``get_run``)."""

    class Reading(base):  # type: ignore[valid-type,misc]
        reads = 0

        async def get_run(self, run_id: str) -> RunRecord | None:
            type(self).reads += 1
            return await super().get_run(run_id)

    return Reading


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def adapter(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """Makes an unopened store of one adapter, counting its run reads."""
    if request.param == "memory":
        return lambda: reading(MemoryStore)()
    if request.param == "sqlite":
        return lambda: reading(SqliteStore)(str(tmp_path / "runs.db"))
    dsn = request.getfixturevalue("postgres_dsn")
    return lambda: reading(PostgresStore)(dsn)


@pytest.fixture
async def store(adapter: Callable[[], Store]) -> AsyncIterator[Store]:
    s = adapter()
    await s.open()
    yield s
    await s.close()


@step
def add(a: int, b: int) -> int:
    return a + b


@step
def boom() -> int:
    raise ValueError("boom")


@step
async def slow() -> int:
    await asyncio.sleep(WAIT)
    return 0


@pipeline
def adding() -> object:
    return add(add(1, 2), 3)


@pipeline
def failing() -> object:
    return add(boom(), 1)


@pipeline
def sleeping() -> object:
    return slow()


def without_lease(record: RunRecord) -> RunRecord:
    """The record but its lease's end (renewed in the store while the run ran)."""
    return replace(record, lease_until=None)


async def drive(
    store: Store,
    definition: Any,
    act: Callable[[Coordinator, LocalRun], Any] | None = None,
) -> tuple[RunRecord, int, RunRecord | None]:
    """Run ``definition`` to its end through a coordinator and a worker on ``store``
    (``act`` is called once it is submitted); the record its waiter got, how many run
    records the wait read from the store, and the store's record of it."""
    compiled = definition.compile()
    transport, objects = MemoryTransport(), MemoryObjectStore()
    await transport.open()
    config = WorkerConfig(name="w", heartbeat_interval=0.05)
    async with (
        Coordinator(transport, store, CoordinatorConfig(), objects=objects) as coordinator,
        Worker(transport, objects, compiled.steps, config) as worker,
    ):
        await worker.serve("default")
        active = await coordinator.submit(compiled.plan)
        run = LocalRun(coordinator, active, store, objects)
        if act is not None:
            await act(coordinator, run)
        before = type(store).reads  # type: ignore[attr-defined]
        async with asyncio.timeout(WAIT):
            got = await run.wait()
        reads = type(store).reads - before  # type: ignore[attr-defined]
        stored = await store.get_run(run.run_id)
    await transport.close()
    return got, reads, stored


async def test_a_succeeded_run_is_handed_to_its_waiter_as_committed_without_a_read(
    store: Store,
) -> None:
    got, reads, stored = await drive(store, adding)
    assert reads == 0
    assert stored is not None and got.status is RunStatus.SUCCEEDED
    assert without_lease(got) == without_lease(stored)
    assert got.started_at is not None and got.finished_at is not None and got.result


async def test_a_failed_run_is_handed_to_its_waiter_as_committed_without_a_read(
    store: Store,
) -> None:
    got, reads, stored = await drive(store, failing)
    assert reads == 0
    assert stored is not None and got.status is RunStatus.FAILED
    assert without_lease(got) == without_lease(stored)


async def test_a_cancelled_run_is_handed_to_its_waiter_with_its_reason(store: Store) -> None:
    async def cancel(coordinator: Coordinator, run: LocalRun) -> None:
        await run.cancel("enough")

    got, reads, stored = await drive(store, sleeping, cancel)
    assert reads == 0
    assert stored is not None and got.status is RunStatus.CANCELLED
    assert without_lease(got) == without_lease(stored)


async def test_the_record_handed_out_is_a_copy_each_waiter_may_change(store: Store) -> None:
    compiled = adding.compile()
    transport, objects = MemoryTransport(), MemoryObjectStore()
    await transport.open()
    async with (
        Coordinator(transport, store, CoordinatorConfig(), objects=objects) as coordinator,
        Worker(transport, objects, compiled.steps, WorkerConfig(name="w")) as worker,
    ):
        await worker.serve("default")
        run = LocalRun(coordinator, await coordinator.submit(compiled.plan), store, objects)
        first = await asyncio.wait_for(run.wait(), WAIT)
        first.tags["mine"] = "x"
        first.params["p"] = 1
        second = await run.wait()
        assert await run.result() == 6
    await transport.close()
    assert second.tags == {} and second.params == {}


async def test_a_run_the_store_ended_failed_for_good_is_read_back_from_the_store() -> None:
    """A run the store refused to record is failed there, outside any commit the
    coordinator folds: its waiter reads what the store holds."""
    store = reading(MemoryStore)()
    await store.open()

    async def refuse(coordinator: Coordinator, run: LocalRun) -> None:
        await store.fail_run(run.run_id, "refused", ts=1.0)
        await coordinator.end_failed(run.run_id, None)

    got, reads, stored = await drive(store, sleeping, refuse)
    await store.close()
    assert reads == 1
    assert got == stored and got.status is RunStatus.FAILED and got.error == "refused"
