"""Delivery semantics on the in-memory transport: lost workers, duplicates, bad messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from aexec import messages, pipeline, step
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.events import EventKind
from aexec.objects.memory import MemoryObjectStore
from aexec.store.memory import MemoryStore
from aexec.testing import wait_for_event
from aexec.transport import DEAD_LETTER_QUEUE, Delivery
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus, StepStatus
from aexec.wire import step_queue
from aexec.worker import Worker, WorkerConfig


@pytest.fixture
async def transport() -> AsyncIterator[MemoryTransport]:
    t = MemoryTransport()
    await t.open()
    yield t
    await t.close()


async def test_steps_of_a_worker_that_stops_heartbeating_run_again_elsewhere(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    calls: list[str] = []
    never = asyncio.Event()

    @step
    async def long() -> str:
        calls.append("x")
        if len(calls) == 1:
            await never.wait()  # the first worker "dies" while running this
        return "done"

    @pipeline
    def p() -> object:
        return long()

    compiled = p.compile()
    objects = MemoryObjectStore()
    config = CoordinatorConfig(worker_timeout=0.3)
    quick = dict(heartbeat_interval=0.05, ack_after=0.05)
    async with Coordinator(transport, store, config) as coordinator:
        doomed = Worker(transport, objects, compiled.steps, WorkerConfig(name="doomed", **quick))
        async with doomed:
            await doomed.serve("default")
            run = await coordinator.submit(compiled.plan)
            # Reported in a heartbeat, so the worker has acked the delivery.
            await wait_for_event(coordinator.events(run.run_id), EventKind.STEP_STARTED)
            # Simulate SIGKILL: no more heartbeats, no completion, the delivery already acked.
            await doomed.abort()
            survivor = Worker(
                transport, objects, compiled.steps, WorkerConfig(name="survivor", **quick)
            )
            async with survivor:
                await survivor.serve("default")
                status = await asyncio.wait_for(run.done, 10)
            never.set()
    assert status is RunStatus.SUCCEEDED
    assert calls == ["x", "x"]
    (record,) = await store.get_steps(run.run_id)
    assert record.status is StepStatus.SUCCEEDED and record.attempts == 2
    events = await store.get_events(run.run_id)
    lost = [e for e in events if e.kind is EventKind.STEP_RETRYING]
    assert len(lost) == 1 and lost[0].data["error"]["type"] == "WorkerLostError"
    assert [e.kind for e in events].count(EventKind.STEP_SUCCEEDED) == 1


async def test_duplicate_completions_never_run_a_dependent_twice(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    release = asyncio.Event()
    started = asyncio.Event()
    runs: list[str] = []

    @step
    async def first() -> int:
        return 1

    @step
    async def second(x: int) -> int:
        runs.append("second")
        started.set()
        await release.wait()
        return x + 1

    @pipeline
    def p() -> object:
        return second(first())

    compiled = p.compile()
    async with (
        Coordinator(transport, store) as coordinator,
        Worker(transport, MemoryObjectStore(), compiled.steps) as worker,
    ):
        await worker.serve("default")
        run = await coordinator.submit(compiled.plan)
        await asyncio.wait_for(started.wait(), 5)
        duplicate = messages.Completion(run.run_id, "first", 1, b"\x01", None, "ghost", 0, 0)
        for _ in range(3):
            await transport.publish(coordinator.reply_queue, duplicate.encode())
        await asyncio.sleep(0.05)  # let the coordinator take the duplicates in
        release.set()
        assert await asyncio.wait_for(run.done, 5) is RunStatus.SUCCEEDED
    assert runs == ["second"]
    kinds = [(e.kind, e.step) for e in await store.get_events(run.run_id)]
    assert kinds.count((EventKind.STEP_SUCCEEDED, "first")) == 1
    assert kinds.count((EventKind.STEP_DISPATCHED, "second")) == 1


async def test_malformed_and_unknown_messages_are_dead_lettered_and_the_worker_keeps_serving(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    @step
    async def ok() -> str:
        return "ok"

    @pipeline
    def p() -> object:
        return ok()

    compiled = p.compile()
    dead: list[bytes] = []
    three = asyncio.Event()

    async def collect(delivery: Delivery) -> None:
        dead.append(delivery.body)
        await delivery.ack()
        if len(dead) == 3:
            three.set()

    await transport.consume(DEAD_LETTER_QUEUE, collect, prefetch=10)
    async with (
        Coordinator(transport, store) as coordinator,
        Worker(transport, MemoryObjectStore(), compiled.steps) as worker,
    ):
        await worker.serve("default")
        await transport.publish(step_queue("default"), b"\xc1 not msgpack")
        unknown = messages.StepMessage(
            "r", "k", 1, "no_such_step", b"\x92\x90\x80", [], None, coordinator.reply_queue
        )
        await transport.publish(step_queue("default"), unknown.encode())
        run = await coordinator.submit(compiled.plan)
        assert await asyncio.wait_for(run.done, 5) is RunStatus.SUCCEEDED
        # The worker dead-letters the two bad step messages; the failed completion it sent
        # for the unknown step names a run no store knows: the coordinator dead-letters it.
        await asyncio.wait_for(three.wait(), 5)
    assert dead[0] == b"\xc1 not msgpack"
    assert unknown.encode() in dead
    (completion,) = [b for b in dead if b not in (b"\xc1 not msgpack", unknown.encode())]
    decoded = messages.decode(completion)
    assert isinstance(decoded, messages.Completion) and decoded.run_id == "r"


def test_prefetch_matches_what_can_run_at_once() -> None:
    @step
    async def a() -> None: ...

    @step
    def s() -> None: ...

    transport, objects = MemoryTransport(), MemoryObjectStore()
    assert Worker(transport, objects, {"a": a}, WorkerConfig(concurrency=50)).prefetch == 50
    sync_only = Worker(
        transport, objects, {"s": s}, WorkerConfig(concurrency=50, thread_pool_size=4)
    )
    assert sync_only.prefetch == 4  # more would wait inside the worker, out of priority order
    processes = Worker(
        transport,
        objects,
        {"s": s},
        WorkerConfig(concurrency=50, pool="process", process_pool_size=3),
    )
    assert processes.prefetch == 3
