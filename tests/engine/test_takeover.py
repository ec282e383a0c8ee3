"""Coordinator crash recovery on the in-memory adapters: leases, takeover, reconciliation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import aexec
from aexec import pipeline, step
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.events import Event, EventKind
from aexec.objects.memory import MemoryObjectStore
from aexec.store import RunRecord
from aexec.store.memory import MemoryStore
from aexec.testing import wait_for_event
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus, StepStatus
from aexec.worker import Worker, WorkerConfig


async def test_a_run_whose_coordinator_died_is_taken_over_and_finished() -> None:
    gate = asyncio.Event()
    started = asyncio.Event()
    executions: list[str] = []

    @step
    async def first() -> int:
        executions.append("first")
        return 1

    @step
    async def second(x: int) -> int:
        executions.append("second")
        started.set()
        await gate.wait()
        return x + 1

    @step
    async def third(x: int) -> int:
        executions.append("third")
        return x * 10

    @pipeline
    def p() -> object:
        return third(second(first()))

    compiled = p.compile()
    transport, store = MemoryTransport(), MemoryStore()
    await transport.open()
    await store.open()
    fast = dict(lease=0.3, worker_timeout=2.0)
    worker = Worker(
        transport,
        MemoryObjectStore(),
        compiled.steps,
        WorkerConfig(name="w", heartbeat_interval=0.05, ack_after=0.1),
    )
    async with worker:
        await worker.serve("default")
        doomed = Coordinator(transport, store, CoordinatorConfig(id="doomed", **fast))
        await doomed.__aenter__()
        run = await doomed.submit(compiled.plan)
        await asyncio.wait_for(started.wait(), 5)
        # Recorded as running, on worker w: its heartbeats will vouch for it.
        await wait_for_event(store.follow(run.run_id), EventKind.STEP_STARTED, step="second")
        await doomed.abort()  # as SIGKILL would: no release, no clean-up, nothing acked

        heir = Coordinator(transport, store, CoordinatorConfig(id="heir", adopt=True, **fast))
        async with heir:
            followed: list[EventKind] = []

            async def follow() -> None:
                async for event in store.follow(run.run_id):
                    followed.append(event.kind)
                    if event.kind is EventKind.RUN_RESUMED:
                        gate.set()  # the step finishes only once the heir drives the run

            await asyncio.wait_for(follow(), 10)
    record = await store.get_run(run.run_id)
    assert record is not None and record.status is RunStatus.SUCCEEDED
    assert record.owner == "heir"
    assert executions == ["first", "second", "third"]  # nothing ran twice
    steps = {s.key: s for s in await store.get_steps(run.run_id)}
    assert all(s.status is StepStatus.SUCCEEDED for s in steps.values())
    assert steps["second"].attempts == 1  # its completion reached the heir via the old queue
    assert followed.count(EventKind.RUN_RESUMED) == 1
    assert followed[-1] is EventKind.RUN_SUCCEEDED
    await store.close()
    await transport.close()


class Unconfirming(MemoryStore):
    """Never records a confirmed dispatch: as if its coordinator died before it could."""

    async def append(self, events: Sequence[Event], **options: Any) -> None:
        await super().append(events, **{**options, "confirmed": ()})


class Confirming(MemoryStore):
    """Tells when it has recorded a confirmed dispatch."""

    def __init__(self) -> None:
        super().__init__()
        self.confirmed = asyncio.Event()

    async def append(self, events: Sequence[Event], **options: Any) -> None:
        confirmed = options.get("confirmed", ())
        await super().append(events, **options)
        if confirmed:
            self.confirmed.set()


async def test_queued_steps_never_confirmed_are_dispatched_again_after_a_takeover() -> None:
    @step
    async def only() -> str:
        return "done"

    @pipeline
    def p() -> object:
        return only()

    compiled = p.compile()
    transport, store = MemoryTransport(), Unconfirming()
    await transport.open()
    await store.open()
    fast = dict(lease=0.3, worker_timeout=2.0)
    doomed = Coordinator(transport, store, CoordinatorConfig(id="doomed", **fast))
    await doomed.__aenter__()
    run = await doomed.submit(compiled.plan)  # no worker yet: the step stays queued
    await wait_for_event(store.follow(run.run_id), EventKind.STEP_DISPATCHED)
    await doomed.abort()
    await transport.delete_queues(["step.default"])  # as if the dispatch never reached it
    async with (
        Coordinator(transport, store, CoordinatorConfig(id="heir", adopt=True, **fast)),
        Worker(transport, MemoryObjectStore(), compiled.steps) as worker,
    ):
        await worker.serve("default")
        async with asyncio.timeout(30):  # a run left undriven fails here instead of hanging
            events = [e async for e in store.follow(run.run_id)]
    assert events[-1].kind is EventKind.RUN_SUCCEEDED
    (record,) = await store.get_steps(run.run_id)
    assert record.status is StepStatus.SUCCEEDED and record.attempts == 2
    (lost,) = [e for e in events if e.kind is EventKind.STEP_RETRYING]
    assert lost.attempt == 1 and lost.data["lost"] is True  # said so, and no retry spent
    await store.close()
    await transport.close()


async def test_a_step_whose_message_the_broker_confirmed_runs_once_after_a_takeover() -> None:
    executions: list[int] = []

    @step
    async def only() -> str:
        executions.append(aexec.current().attempt)
        return "done"

    @pipeline
    def p() -> object:
        return only()

    compiled = p.compile()
    transport, store = MemoryTransport(), Confirming()
    await transport.open()
    await store.open()
    fast = dict(lease=0.3, worker_timeout=2.0)
    doomed = Coordinator(transport, store, CoordinatorConfig(id="doomed", **fast))
    await doomed.__aenter__()
    run = await doomed.submit(compiled.plan)  # no worker yet: the message waits in its queue
    await asyncio.wait_for(store.confirmed.wait(), 5)
    await doomed.abort()
    async with Coordinator(transport, store, CoordinatorConfig(id="heir", adopt=True, **fast)):
        await wait_for_event(store.follow(run.run_id), EventKind.RUN_RESUMED)
        async with Worker(transport, MemoryObjectStore(), compiled.steps) as worker:
            await worker.serve("default")  # takes the first message; replies reach the heir
            kinds = [e.kind async for e in store.follow(run.run_id)]
    assert kinds[-1] is EventKind.RUN_SUCCEEDED
    assert kinds.count(EventKind.STEP_DISPATCHED) == 1 and EventKind.STEP_RETRYING not in kinds
    (record,) = await store.get_steps(run.run_id)
    assert record.status is StepStatus.SUCCEEDED and record.attempts == 1
    assert executions == [1]
    # The dead coordinator's reply queue outlives the run: other runs it sent steps for,
    # taken over by other coordinators, may still get their replies there.
    assert "reply.doomed" in transport._queues
    await store.close()
    await transport.close()


async def test_a_run_taken_over_before_it_started_is_started_by_its_new_coordinator() -> None:
    @step
    async def only() -> str:
        return "done"

    @pipeline
    def p() -> object:
        return only()

    compiled = p.compile()
    plan = compiled.plan
    transport, store = MemoryTransport(), MemoryStore()
    await transport.open()
    await store.open()
    # Created by a coordinator that died before it started the run: pending, lease ended.
    record = RunRecord("r-pending", plan.pipeline, plan.digest, created_at=time.time())
    record.owner, record.lease_until = "doomed", time.time() - 1
    await store.create_run(record, plan)
    fast = dict(lease=0.3, worker_timeout=2.0)
    async with (
        Coordinator(transport, store, CoordinatorConfig(id="heir", adopt=True, **fast)),
        Worker(transport, MemoryObjectStore(), compiled.steps) as worker,
    ):
        await worker.serve("default")
        kinds = [e.kind async for e in store.follow("r-pending")]
    assert kinds[:3] == [EventKind.RUN_SUBMITTED, EventKind.RUN_RESUMED, EventKind.RUN_STARTED]
    assert kinds[-1] is EventKind.RUN_SUCCEEDED
    finished = await store.get_run("r-pending")
    assert finished is not None and finished.started_at is not None
    assert finished.status is RunStatus.SUCCEEDED
    await store.close()
    await transport.close()
