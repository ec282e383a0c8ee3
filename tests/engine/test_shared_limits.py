"""Concurrency caps hold across coordinators sharing a store (memory adapters): two
coordinators that both drive runs, and a takeover of one of them mid-run; and, on every
store, the faults around the store's slots (a call failing, a coordinator killed after
taking or freeing slots).

The step bodies record how many attempts run at once: the cap is the truth across both
coordinators, not per coordinator, and the slots held in the store are all freed at the end.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from aexec import pipeline, step
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.dsl import Pipeline
from aexec.errors import StoreUnavailableError
from aexec.events import Event, EventKind
from aexec.objects.memory import MemoryObjectStore
from aexec.store import SlotFree, SlotTake
from aexec.store.memory import MemoryStore
from aexec.store.postgres import PostgresStore
from aexec.store.rows import lease_lost
from aexec.store.sqlite import SqliteStore
from aexec.testing import wait_for_event
from aexec.transport.memory import MemoryTransport
from aexec.waiting import waiting_for
from aexec.worker import Worker, WorkerConfig


class Gauge:
    """How many attempts run at once, per name (now and at most)."""

    def __init__(self) -> None:
        self.now: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()

    def enter(self, name: str) -> None:
        self.now[name] += 1
        self.peak[name] = max(self.peak[name], self.now[name])

    def leave(self, name: str) -> None:
        self.now[name] -= 1


@asynccontextmanager
async def two_coordinators(
    compiled: Any, store: MemoryStore, **config: Any
) -> AsyncIterator[tuple[MemoryTransport, Coordinator, Coordinator]]:
    """A worker serving ``compiled``'s steps and two coordinators "a" and "b" (both adopt)
    on one memory transport and ``store``."""
    transport = MemoryTransport()
    await transport.open()
    worker_config = WorkerConfig(name="w", heartbeat_interval=0.05, ack_after=0.1)
    fast = {"lease": 0.3, "worker_timeout": 5.0, "adopt": True, **config}
    try:
        async with AsyncExitStack() as stack:
            worker = await stack.enter_async_context(
                Worker(transport, MemoryObjectStore(), compiled.steps, worker_config)
            )
            await worker.serve("default")
            a = await stack.enter_async_context(
                Coordinator(transport, store, CoordinatorConfig(id="a", **fast))
            )
            b = Coordinator(transport, store, CoordinatorConfig(id="b", **fast))
            await stack.enter_async_context(b)
            yield transport, a, b
    finally:
        await transport.close()


def many_capped(gauge: Gauge, release: asyncio.Event | None = None) -> tuple[Any, Pipeline]:
    @step(concurrency=2)
    async def capped(i: int) -> int:
        gauge.enter("capped")
        try:
            if release is None:
                await asyncio.sleep(0.03)
            else:
                await release.wait()
        finally:
            gauge.leave("capped")
        return i

    @pipeline
    def many() -> object:
        return [capped.alias(f"c{i}")(i) for i in range(6)]

    return capped, many


async def test_two_coordinators_together_run_no_more_attempts_than_the_cap() -> None:
    gauge = Gauge()
    _, many = many_capped(gauge)
    compiled = many.compile()
    store = MemoryStore()
    await store.open()
    async with asyncio.timeout(25), two_coordinators(compiled, store) as (_, a, b):
        runs = [await c.submit(compiled.plan) for c in (a, b, a, b)]
        for run in runs:
            await wait_for_event(store.follow(run.run_id), EventKind.RUN_SUCCEEDED)
    assert gauge.peak["capped"] == 2  # each coordinator alone would let 2 run: 4 together
    assert await store.slot_holders("step:capped") == []  # every slot freed


async def test_a_named_limit_and_a_per_key_cap_hold_across_coordinators() -> None:
    gauge = Gauge()

    @step(uses="gpu")
    async def render(i: int) -> int:
        gauge.enter("gpu")
        try:
            await asyncio.sleep(0.03)
        finally:
            gauge.leave("gpu")
        return i

    @step(concurrency=1, limit_key="tenant")
    async def bill(tenant: str, i: int) -> int:
        gauge.enter(tenant)
        try:
            await asyncio.sleep(0.03)
        finally:
            gauge.leave(tenant)
        return i

    @pipeline
    def work() -> object:
        return [
            *[render.alias(f"r{i}")(i) for i in range(4)],
            *[bill.alias(f"b{i}")("acme" if i % 2 else "umbrella", i) for i in range(4)],
        ]

    compiled = work.compile()
    store = MemoryStore()
    await store.open()
    async with (
        asyncio.timeout(25),
        two_coordinators(compiled, store, limits={"gpu": 1}) as (_, a, b),
    ):
        runs = [await c.submit(compiled.plan) for c in (a, b, a, b)]
        for run in runs:
            await wait_for_event(store.follow(run.run_id), EventKind.RUN_SUCCEEDED)
    assert gauge.peak["gpu"] == 1
    assert gauge.peak["acme"] == 1 and gauge.peak["umbrella"] == 1


async def test_a_takeover_keeps_the_slots_of_running_attempts_and_frees_them_when_they_end() -> (
    None
):
    gauge = Gauge()
    release = asyncio.Event()
    _, many = many_capped(gauge, release)
    compiled = many.compile()
    store = MemoryStore()
    await store.open()
    async with asyncio.timeout(25), two_coordinators(compiled, store) as (_, a, b):
        first = await a.submit(compiled.plan)
        for key in ("c0", "c1"):  # recorded as running (not only sent) before a dies
            await wait_for_event(store.follow(first.run_id), EventKind.STEP_STARTED, step=key)
        held = await store.slot_holders("step:capped")
        assert sorted(h[0] for h in held) == [first.run_id] * 2
        second = await b.submit(compiled.plan)  # its steps wait for a's slots
        await a.abort()  # as SIGKILL would: b takes the first run over
        await wait_for_event(store.follow(first.run_id), EventKind.RUN_RESUMED)
        await asyncio.sleep(0.5)  # b polls the store for slots meanwhile: none is free
        assert gauge.now["capped"] == 2
        assert await store.slot_holders("step:capped") == held  # still held, not leaked
        record = await store.get_run(second.run_id)
        assert record is not None
        reasons = waiting_for(
            record, await store.get_steps(second.run_id), await store.get_plan(record.plan_digest)
        )
        assert set(reasons.values()) == {"concurrency limit capped (2)"}
        release.set()
        for run in (first, second):
            await wait_for_event(store.follow(run.run_id), EventKind.RUN_SUCCEEDED)
    assert gauge.peak["capped"] == 2
    assert await store.slot_holders("step:capped") == []


# -- faults around the store's slots, on every store -------------------------------------


class SlotFaults:
    """Faults of :meth:`~aexec.store.Store.sync_slots` on a real store: calls that fail
    before reaching it, calls it committed but whose answer is lost (both transient, as a
    dropped connection), and one call after which the coordinator making it hangs, so that
    the test can kill it there (``hang_on``: which call, by its frees and takes)."""

    fail_before = 0
    fail_after = 0
    calls = 0
    hang_on: Callable[[Sequence[SlotFree], Sequence[SlotTake]], bool] | None = None
    hung: asyncio.Event
    # The commit that ends a run finds it taken over (fenced out), by a driver that took a
    # slot for it ("x", attempt 9) meanwhile (when its first steps were dispatched).
    lose_on_end = False
    lost: asyncio.Event
    ended: asyncio.Event

    async def append(self, events: Sequence[Event], **options: Any) -> None:
        if self.lose_on_end:
            started = [e.run_id for e in events if e.kind is EventKind.STEP_DISPATCHED]
            if started and not self.lost.is_set():  # the other driver's slot, early on
                new_driver = SlotTake(started[0], "x", 9, (("step:capped", 10),))
                await super().sync_slots([], [new_driver])  # type: ignore[misc]
                self.lost.set()
            ended = [e.run_id for e in events if e.kind is EventKind.RUN_SUCCEEDED]
            if ended:
                self.lose_on_end = False
                self.ended.set()
                raise lease_lost(ended[:1])
        await super().append(events, **options)  # type: ignore[misc]

    async def sync_slots(self, frees: Sequence[SlotFree], takes: Sequence[SlotTake]) -> list[bool]:
        self.calls += 1
        if self.fail_before and self.calls % 3 == 0:
            self.fail_before -= 1
            raise StoreUnavailableError("connection reset (before the call)")
        granted: list[bool] = await super().sync_slots(frees, takes)  # type: ignore[misc]
        if self.fail_after and self.calls % 4 == 0:
            self.fail_after -= 1
            raise StoreUnavailableError("connection reset (after the commit)")
        if self.hang_on is not None and self.hang_on(frees, takes):
            self.hang_on = None
            self.hung.set()
            await asyncio.Event().wait()  # the coordinator is killed here
        return granted


STORES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORES)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    """Makes a store of each adapter, with :class:`SlotFaults` (none armed yet)."""
    if request.param == "memory":
        return type("FaultyMemory", (SlotFaults, MemoryStore), {})
    if request.param == "sqlite":
        return lambda: type("FaultySqlite", (SlotFaults, SqliteStore), {})(tmp_path / "runs.db")
    dsn = request.getfixturevalue("postgres_dsn")
    return lambda: type("FaultyPostgres", (SlotFaults, PostgresStore), {})(dsn)


@pytest.fixture
async def faulty_store(make_store: Callable[[], Any]) -> AsyncIterator[Any]:
    store = make_store()
    store.hung, store.lost, store.ended = asyncio.Event(), asyncio.Event(), asyncio.Event()
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def finish_all(store: Any, runs: list[Any]) -> None:
    for run in runs:
        await wait_for_event(store.follow(run.run_id), EventKind.RUN_SUCCEEDED)


async def test_slot_calls_that_fail_transiently_are_retried_and_leak_or_double_take_nothing(
    faulty_store: Any,
) -> None:
    gauge = Gauge()
    _, many = many_capped(gauge)
    compiled = many.compile()
    faulty_store.fail_before, faulty_store.fail_after = 4, 4
    async with (
        asyncio.timeout(40),
        two_coordinators(compiled, faulty_store, retry_backoff=0.01) as (_, a, b),
    ):
        runs = [await c.submit(compiled.plan) for c in (a, b, a, b)]
        await finish_all(faulty_store, runs)
    assert faulty_store.fail_before == 0 and faulty_store.fail_after == 0  # all happened
    assert gauge.peak["capped"] == 2
    assert await faulty_store.slot_holders("step:capped") == []


async def test_a_coordinator_killed_between_taking_slots_and_dispatching_leaks_none(
    faulty_store: Any,
) -> None:
    """Its slots were taken (committed), its steps not sent: the coordinator that takes
    its run over sends them under those slots, and every slot is freed in the end."""
    gauge = Gauge()
    _, many = many_capped(gauge)
    compiled = many.compile()
    faulty_store.hang_on = lambda frees, takes: bool(takes)
    async with asyncio.timeout(40), two_coordinators(compiled, faulty_store) as (_, a, b):
        run = await a.submit(compiled.plan)
        await faulty_store.hung.wait()
        assert len(await faulty_store.slot_holders("step:capped")) == 2  # taken, not sent
        await a.abort()  # as SIGKILL would: b takes the run over
        await wait_for_event(faulty_store.follow(run.run_id), EventKind.RUN_RESUMED)
        later = await b.submit(compiled.plan)
        await finish_all(faulty_store, [run, later])
    assert gauge.peak["capped"] == 2
    assert await faulty_store.slot_holders("step:capped") == []


async def test_a_coordinator_killed_after_freeing_slots_before_recording_the_ends_leaks_none(
    faulty_store: Any,
) -> None:
    """Its frees were committed, not the completions that decided them nor the takes of
    the next steps: the run's new driver records the completions (redelivered) and runs
    the rest under the cap, and every slot is freed in the end."""
    gauge = Gauge()
    _, many = many_capped(gauge)
    compiled = many.compile()
    faulty_store.hang_on = lambda frees, takes: bool(frees)
    async with asyncio.timeout(40), two_coordinators(compiled, faulty_store) as (_, a, b):
        run = await a.submit(compiled.plan)
        await faulty_store.hung.wait()
        await a.abort()
        await wait_for_event(faulty_store.follow(run.run_id), EventKind.RUN_RESUMED)
        later = await b.submit(compiled.plan)
        await finish_all(faulty_store, [run, later])
    assert gauge.peak["capped"] == 2
    assert await faulty_store.slot_holders("step:capped") == []


async def test_a_run_lost_as_it_ends_leaves_the_slots_of_its_new_driver_alone(
    faulty_store: Any,
) -> None:
    """The pass that ends a run frees the run's slots only once that end is recorded: its
    commit found the run taken over, and the slot the new driver took stays held."""
    gauge = Gauge()
    _, many = many_capped(gauge)
    compiled = many.compile()
    faulty_store.lose_on_end = True
    async with (
        asyncio.timeout(40),
        two_coordinators(compiled, faulty_store, adopt=False) as (_, a, _b),
    ):
        run = await a.submit(compiled.plan)
        await faulty_store.ended.wait()
        await asyncio.sleep(0.5)  # a lets go of the run (a free of its slots would be done)
        assert run.run_id not in a.runs
        assert await faulty_store.slot_holders("step:capped") == [(run.run_id, "x", 9)]
    assert gauge.peak["capped"] == 2
