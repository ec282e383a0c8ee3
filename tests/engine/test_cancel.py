"""Durable cancel on the in-memory adapters: a cancel request is kept in the store and
honoured by whichever coordinator starts, drives or takes over the run, however late."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aexec import messages, pipeline, step
from aexec.control import cancel_run
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.dsl import CompiledPipeline
from aexec.errors import StoreUnavailableError
from aexec.events import EventKind
from aexec.objects.memory import MemoryObjectStore
from aexec.store.memory import MemoryStore
from aexec.testing import wait_for_event
from aexec.transport import Delivery
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus, StepStatus
from aexec.wire import COORDINATOR_TOPIC, REQUEST_QUEUE, RUNS_ENDED_TOPIC, SUBMIT_QUEUE
from aexec.worker import Worker, WorkerConfig

WAIT = 10.0
FAST = {"lease": 0.3, "worker_timeout": 2.0}


def gated() -> tuple[CompiledPipeline, asyncio.Event, list[str]]:
    """A pipeline whose first step waits for the returned event; its steps' executions."""
    gate = asyncio.Event()
    executions: list[str] = []

    @step
    async def wait() -> int:
        executions.append("wait")
        await gate.wait()
        return 1

    @step
    async def after(x: int) -> int:
        executions.append("after")
        return x + 1

    @pipeline
    def p() -> object:
        return after(wait())

    return p.compile(), gate, executions


async def ended(transport: MemoryTransport, run_id: str) -> asyncio.Future[str]:
    """Resolves to the status announced once run ``run_id`` ends."""
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_ended(delivery: Delivery) -> None:
        msg = messages.decode(delivery.body)
        if isinstance(msg, messages.RunEnded) and msg.run_id == run_id and not future.done():
            future.set_result(msg.status)

    await transport.follow(RUNS_ENDED_TOPIC, on_ended)
    return future


async def test_a_cancel_sent_while_the_submission_waits_in_its_queue_cancels_the_run() -> None:
    compiled, gate, executions = gated()
    transport, store = MemoryTransport(), MemoryStore()
    await transport.open()
    await store.open()
    announced = await ended(transport, "r-queued")
    await transport.declare_queue(SUBMIT_QUEUE, max_priority=0)
    submit = messages.Submit("r-queued", compiled.plan.to_bytes(), 0, None)
    await transport.publish(SUBMIT_QUEUE, submit.encode())
    await cancel_run("r-queued", "not needed any more", transport=transport)  # nobody serves
    service = Coordinator(transport, store, CoordinatorConfig(id="late", adopt=True, **FAST))
    async with (
        service,
        Worker(transport, MemoryObjectStore(), compiled.steps) as worker,
    ):
        await worker.serve("default")
        await service.accept_submissions()
        assert await asyncio.wait_for(announced, WAIT) == "cancelled"
    record = await store.get_run("r-queued")
    assert record is not None and record.status is RunStatus.CANCELLED
    assert record.error == "run cancelled: not needed any more"
    kinds = [e.kind for e in await store.get_events("r-queued")]
    assert EventKind.STEP_DISPATCHED not in kinds and EventKind.RUN_STARTED not in kinds
    assert {s.status for s in await store.get_steps("r-queued")} == {StepStatus.CANCELLED}
    assert executions == []
    assert transport.queue_depth(REQUEST_QUEUE) == 0  # the request was consumed
    gate.set()
    await store.close()
    await transport.close()


async def test_a_cancel_recorded_while_the_runs_coordinator_is_dead_is_honoured_by_its_heir() -> (
    None
):
    compiled, gate, executions = gated()
    transport, store = MemoryTransport(), MemoryStore()
    await transport.open()
    await store.open()
    worker = Worker(
        transport,
        MemoryObjectStore(),
        compiled.steps,
        WorkerConfig(name="w", heartbeat_interval=0.05, ack_after=0.1),
    )
    async with worker:
        await worker.serve("default")
        doomed = Coordinator(transport, store, CoordinatorConfig(id="doomed", **FAST))
        await doomed.__aenter__()
        run = await doomed.submit(compiled.plan)
        await wait_for_event(store.follow(run.run_id), EventKind.STEP_STARTED, step="wait")
        await doomed.abort()  # as SIGKILL would
        # No coordinator hears the broadcast: only the store keeps the request.
        await cancel_run(run.run_id, "stop it", store=store, transport=transport)
        announced = await ended(transport, run.run_id)
        async with Coordinator(transport, store, CoordinatorConfig(id="heir", adopt=True, **FAST)):
            assert await asyncio.wait_for(announced, WAIT) == "cancelled"
        gate.set()
    record = await store.get_run(run.run_id)
    assert record is not None and record.status is RunStatus.CANCELLED
    assert record.owner == "heir" and record.error == "run cancelled: stop it"
    assert executions == ["wait"]  # its dependent never ran
    await store.close()
    await transport.close()


async def test_a_coordinator_that_missed_the_broadcast_cancels_at_its_next_lease_renewal() -> None:
    compiled, gate, executions = gated()
    transport, store = MemoryTransport(), MemoryStore()
    await transport.open()
    await store.open()
    async with (
        Coordinator(transport, store, CoordinatorConfig(id="owner", **FAST)) as owner,
        Worker(transport, MemoryObjectStore(), compiled.steps) as worker,
    ):
        await worker.serve("default")
        run = await owner.submit(compiled.plan)
        await wait_for_event(store.follow(run.run_id), EventKind.STEP_STARTED, step="wait")
        await cancel_run(run.run_id, store=store)  # recorded, never broadcast
        assert await asyncio.wait_for(asyncio.shield(run.done), WAIT) is RunStatus.CANCELLED
        gate.set()
    record = await store.get_run(run.run_id)
    assert record is not None and record.status is RunStatus.CANCELLED
    assert record.error == "run cancelled"
    assert executions == ["wait"]
    await store.close()
    await transport.close()


async def test_a_run_cancelled_through_its_coordinator_keeps_the_request_for_a_takeover() -> None:
    compiled, gate, _ = gated()
    transport, store = MemoryTransport(), MemoryStore()
    await transport.open()
    await store.open()
    async with (
        Coordinator(transport, store, CoordinatorConfig(id="owner", **FAST)) as owner,
        Worker(transport, MemoryObjectStore(), compiled.steps) as worker,
    ):
        await worker.serve("default")
        run = await owner.submit(compiled.plan)
        await owner.cancel(run.run_id, "by hand")
        assert await asyncio.wait_for(asyncio.shield(run.done), WAIT) is RunStatus.CANCELLED
        gate.set()
    assert await store.cancel_requests([run.run_id]) == {run.run_id: "by hand"}
    record = await store.get_run(run.run_id)
    assert record is not None and record.error == "run cancelled: by hand"
    await store.close()
    await transport.close()


class StalledCancels:
    """A store (``store``'s data) that cannot record cancel requests: the call hangs, as
    it would on a stalled database connection."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def request_cancel(self, run_id: str, reason: str | None = None) -> None:
        await asyncio.Event().wait()


async def test_a_cancel_request_reaches_the_runs_coordinator_while_its_taker_cannot_record_it() -> (
    None
):
    compiled, gate, executions = gated()
    transport, store = MemoryTransport(), MemoryStore()
    await transport.open()
    await store.open()
    stalled: Any = StalledCancels(store)
    async with (
        Coordinator(transport, store, CoordinatorConfig(id="owner", **FAST)) as owner,
        Coordinator(transport, stalled, CoordinatorConfig(id="taker", **FAST)) as taker,
        Worker(transport, MemoryObjectStore(), compiled.steps) as worker,
    ):
        await worker.serve("default")
        run = await owner.submit(compiled.plan)
        await wait_for_event(store.follow(run.run_id), EventKind.STEP_STARTED, step="wait")
        await taker.accept_submissions()  # only it consumes the request queue
        await cancel_run(run.run_id, "now", transport=transport)
        assert await asyncio.wait_for(asyncio.shield(run.done), WAIT) is RunStatus.CANCELLED
        gate.set()
    assert executions == ["wait"]
    await store.close()
    await transport.close()


class FlakyCancels:
    """A store (``store``'s data) whose first attempt to record a cancel request fails, as
    on a database blip; ``recorded`` is set once one is recorded."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.failed = False
        self.recorded = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def request_cancel(self, run_id: str, reason: str | None = None) -> None:
        if not self.failed:
            self.failed = True
            raise StoreUnavailableError("connection refused")
        await self._store.request_cancel(run_id, reason)
        self.recorded.set()


async def test_a_cancel_of_a_run_driven_here_is_recorded_even_after_a_store_blip() -> None:
    compiled, gate, _ = gated()
    transport, store = MemoryTransport(), MemoryStore()
    await transport.open()
    await store.open()
    flaky = FlakyCancels(store)
    config = CoordinatorConfig(id="owner", retry_backoff=0.01, **FAST)
    async with (
        Coordinator(transport, cast(Any, flaky), config) as owner,
        Worker(transport, MemoryObjectStore(), compiled.steps) as worker,
    ):
        await worker.serve("default")
        await owner.accept_submissions()
        run = await owner.submit(compiled.plan)
        await cancel_run(run.run_id, "stop", transport=transport)
        assert await asyncio.wait_for(asyncio.shield(run.done), WAIT) is RunStatus.CANCELLED
        # Kept for whoever takes the run over, though the first try failed: taken again.
        await asyncio.wait_for(flaky.recorded.wait(), WAIT)
        gate.set()
    assert flaky.failed
    assert await store.cancel_requests([run.run_id]) == {run.run_id: "stop"}
    await store.close()
    await transport.close()


async def test_a_cancel_broadcast_just_before_a_coordinator_starts_the_run_is_honoured() -> None:
    compiled, gate, executions = gated()
    transport, store = MemoryTransport(), MemoryStore()
    await transport.open()
    await store.open()
    announced = await ended(transport, "r-late")
    service = Coordinator(transport, store, CoordinatorConfig(id="service", **FAST))
    async with (
        service,
        Worker(transport, MemoryObjectStore(), compiled.steps) as worker,
    ):
        await worker.serve("default")
        # Heard before the run exists anywhere, and recorded nowhere (its sender's store
        # write is still under way): the coordinator that starts it remembers it.
        cancel = messages.Control("cancel", run_id="r-late", reason="too late")
        await transport.broadcast(COORDINATOR_TOPIC, cancel.encode())
        await transport.declare_queue(SUBMIT_QUEUE, max_priority=0)
        submit = messages.Submit("r-late", compiled.plan.to_bytes(), 0, None)
        await transport.publish(SUBMIT_QUEUE, submit.encode())
        await service.accept_submissions()
        assert await asyncio.wait_for(announced, WAIT) == "cancelled"
    gate.set()
    assert executions == []
    record = await store.get_run("r-late")
    assert record is not None and record.error == "run cancelled: too late"
    await store.close()
    await transport.close()
