"""Dispatches the broker may or may not hold, and workers that come back under the same
name, on the in-memory adapters: an attempt is never sent twice, and a worker's new
process does not vouch for the steps its previous process lost."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aexec
from aexec import pipeline, step
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.errors import PublishError
from aexec.events import Event, EventKind
from aexec.objects.memory import MemoryObjectStore
from aexec.store.memory import MemoryStore
from aexec.testing import wait_for_event
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus, StepStatus
from aexec.worker import Worker, WorkerConfig

WAIT = 10.0


class LostConfirm(MemoryTransport):
    """Queues the first batch of step messages, then loses its confirm (as a connection
    that closes before the broker's ack arrives)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    async def publish_many(self, messages: Sequence[tuple[str, bytes, int]]) -> None:
        await super().publish_many(messages)
        if self.armed:
            self.armed = False
            raise PublishError("the connection closed before the confirms", list(messages))


async def test_a_dispatch_whose_confirm_was_lost_goes_again_as_a_new_attempt(
    store: MemoryStore,
) -> None:
    attempts: list[int] = []

    @step
    async def only() -> str:
        attempts.append(aexec.current().attempt)
        return "done"

    @pipeline
    def p() -> object:
        return only()

    compiled = p.compile()
    transport = LostConfirm()
    await transport.open()
    async with (
        asyncio.timeout(WAIT),
        Coordinator(transport, store) as coordinator,
        Worker(transport, MemoryObjectStore(), compiled.steps) as worker,
    ):
        run = await coordinator.submit(compiled.plan)
        async for event in store.follow(run.run_id):  # recorded before it is sent again
            if event.kind is EventKind.STEP_DISPATCHED and event.attempt == 2:
                break
        await worker.serve("default")  # the queue holds attempt 1 (it did arrive) and 2
        assert await asyncio.shield(run.done) is RunStatus.SUCCEEDED
    assert attempts == [1, 2]  # each ran once: never the same attempt twice
    (record,) = await store.get_steps(run.run_id)
    assert (record.status, record.attempts, record.failures) == (StepStatus.SUCCEEDED, 2, 0)
    events = await store.get_events(run.run_id)
    (retrying,) = [e for e in events if e.kind is EventKind.STEP_RETRYING]
    assert (retrying.attempt, retrying.data["lost"]) == (1, True)
    assert retrying.data["error"]["type"] == "PublishError"
    assert [e.attempt for e in events if e.kind is EventKind.STEP_SUCCEEDED] == [2]
    await transport.close()


async def test_a_worker_restarted_under_the_same_name_does_not_hide_the_steps_it_lost(
    store: MemoryStore,
) -> None:
    executions: list[str] = []
    never, busy_done = asyncio.Event(), asyncio.Event()

    @step
    async def lost() -> str:
        executions.append("lost")
        if len(executions) == 1:
            await never.wait()  # its first worker dies while running it
        return "done"

    @step
    async def busy() -> str:
        await busy_done.wait()  # keeps the new worker heartbeating, under the old name
        return "done"

    @pipeline
    def first() -> object:
        return lost()

    @pipeline
    def second() -> object:
        return busy()

    steps = {**first.compile().steps, **second.compile().steps}
    transport = MemoryTransport()
    await transport.open()
    objects = MemoryObjectStore()
    # Acked at its first heartbeat: from then on, only liveness protects the step.
    quick = dict(name="w", heartbeat_interval=0.05, ack_after=0.0)
    config = CoordinatorConfig(worker_timeout=0.5)
    async with asyncio.timeout(WAIT), Coordinator(transport, store, config) as coordinator:
        old = Worker(transport, objects, steps, WorkerConfig(**quick))  # type: ignore[arg-type]
        await old.__aenter__()
        await old.serve("default")
        run = await coordinator.submit(first.compile().plan)
        await wait_for_event(store.follow(run.run_id), EventKind.STEP_STARTED)
        await old.abort()  # killed: the step it ran is lost, its delivery acked already
        async with Worker(transport, objects, steps, WorkerConfig(**quick)) as new:  # type: ignore[arg-type]
            await new.serve("default")
            other = await coordinator.submit(second.compile().plan)
            await wait_for_event(store.follow(other.run_id), EventKind.STEP_STARTED)
            try:
                assert await asyncio.shield(run.done) is RunStatus.SUCCEEDED
            finally:
                busy_done.set()
            assert await asyncio.shield(other.done) is RunStatus.SUCCEEDED
    assert executions == ["lost", "lost"]
    (record,) = await store.get_steps(run.run_id)
    assert (record.attempts, record.failures) == (2, 0)  # the lost attempt spent no retry
    await transport.close()


class RecordsConfirms(MemoryStore):
    """Keeps the ``(run, step, attempt)`` of every confirmed dispatch it records."""

    def __init__(self) -> None:
        super().__init__()
        self.confirmed: set[tuple[str, str, int]] = set()
        self.recorded = asyncio.Event()

    async def append(self, events: Sequence[Event], **options: Any) -> None:
        confirmed = options.get("confirmed", ())
        await super().append(events, **options)
        self.confirmed.update(confirmed)
        self.recorded.set()


QUIET = WorkerConfig(
    heartbeat_interval=60.0, drain_grace=1.0
)  # no heartbeat: nothing commits but the timer


async def test_every_confirmed_dispatch_is_recorded_even_when_no_commit_follows_it() -> None:
    """Steps go out one at a time (a concurrency limit), so their confirms arrive while the
    confirm timer of earlier ones runs; the last one's must be recorded all the same while
    its step runs and nothing else happens."""
    gate = asyncio.Event()

    @step(concurrency=1)
    async def one(i: int) -> int:
        await asyncio.sleep(0.02)  # the 20 take several of the timer's windows
        return i

    @step
    async def last(values: list[int]) -> int:
        await gate.wait()
        return sum(values)

    @pipeline
    def trickle() -> object:
        return last([one.alias(f"one_{i}")(i) for i in range(20)])

    compiled = trickle.compile()
    transport, store = MemoryTransport(), RecordsConfirms()
    await transport.open()
    await store.open()
    try:
        async with (
            Coordinator(transport, store) as coordinator,
            Worker(transport, MemoryObjectStore(), compiled.steps, QUIET) as worker,
        ):
            await worker.serve("default")
            run = await coordinator.submit(compiled.plan)
            async with asyncio.timeout(WAIT):
                await wait_for_event(coordinator.events(run.run_id), EventKind.STEP_DISPATCHED,
                                     step="last")  # fmt: skip
                while (run.run_id, "last", 1) not in store.confirmed:
                    store.recorded.clear()
                    await store.recorded.wait()
            expected = {(run.run_id, f"one_{i}", 1) for i in range(20)} | {(run.run_id, "last", 1)}
            assert store.confirmed == expected
            gate.set()
            assert await asyncio.wait_for(run.done, WAIT) is RunStatus.SUCCEEDED
    finally:
        await store.close()
        await transport.close()
