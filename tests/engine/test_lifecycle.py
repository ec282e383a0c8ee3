"""How the engine stops: cleanly, abruptly (``abort()``, as a crash would), or after a bug."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import pytest

from aexec import messages, pipeline, step
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.errors import AexecError, TransportError
from aexec.events import EventKind
from aexec.objects.memory import MemoryObjectStore
from aexec.plan import Plan
from aexec.store.memory import MemoryStore
from aexec.transport import Delivery
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus, StepStatus
from aexec.wire import step_queue
from aexec.worker import Worker, WorkerConfig


class BuggyStore(MemoryStore):
    """A store whose lease renewal hits a bug (not a backend error) once ``broken`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    async def renew_leases(
        self, owner: str, lease: float, held: Mapping[str, int] | None = None
    ) -> set[str]:
        if self.broken:
            raise RuntimeError("a bug in renew_leases")
        return await super().renew_leases(owner, lease, held)


class BuggyHeartbeats(MemoryTransport):
    """A transport that hits a bug (not a broker error) on the heartbeats of worker ``name``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    async def publish(self, queue: str, body: bytes, *, priority: int = 0) -> None:
        msg = messages.decode(body)
        if isinstance(msg, messages.Heartbeat) and msg.worker == self.name:
            raise RuntimeError("a bug in publish")
        await super().publish(queue, body, priority=priority)


@pytest.fixture
async def transport() -> AsyncIterator[MemoryTransport]:
    t = MemoryTransport()
    await t.open()
    yield t
    await t.close()


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    s = MemoryStore()
    await s.open()
    yield s
    await s.close()


def one_step_plan() -> Plan:
    @step
    async def only() -> str:
        return "done"

    @pipeline
    def p() -> object:
        return only()

    return p.compile().plan


async def reply_queue_exists(transport: MemoryTransport, queue: str) -> bool:
    try:
        await transport.publish(queue, b"probe")
    except TransportError:
        return False
    return True


@pytest.mark.parametrize("stop", ["exit", "abort"])
async def test_abort_keeps_the_reply_queue_that_a_clean_exit_deletes(
    transport: MemoryTransport, store: MemoryStore, stop: str
) -> None:
    coordinator = Coordinator(transport, store, CoordinatorConfig(id="c"))
    async with coordinator:
        if stop == "abort":
            await coordinator.abort()
    assert await reply_queue_exists(transport, coordinator.reply_queue) is (stop == "abort")


@pytest.mark.parametrize("stop", ["exit", "abort"])
async def test_abort_commits_nothing_more_where_a_clean_exit_commits_what_trails(
    transport: MemoryTransport, store: MemoryStore, stop: str
) -> None:
    # Embedded dispatch: commits trail the dispatches (here by up to a minute).
    config = CoordinatorConfig(durable_dispatch=False, durable_replies=False, flush_interval=60)
    dispatched = asyncio.Event()

    async def take(delivery: Delivery) -> None:
        dispatched.set()

    coordinator = Coordinator(transport, store, config)
    async with coordinator:
        run = await coordinator.submit(one_step_plan())
        await transport.consume(step_queue("default"), take, prefetch=1)
        await dispatched.wait()  # the scheduler dispatched the step; its events trail
        if stop == "abort":
            await coordinator.abort()
    kinds = [e.kind for e in await store.get_events(run.run_id)]
    # run_submitted is committed with the run itself, before any dispatch.
    if stop == "abort":
        assert kinds == [EventKind.RUN_SUBMITTED]
    else:
        assert kinds == [EventKind.RUN_SUBMITTED, EventKind.RUN_STARTED, EventKind.STEP_DISPATCHED]
    assert run.done.cancelled()  # either way, nobody waits for it here any more


async def test_an_aborted_coordinator_keeps_its_runs_until_another_takes_them_over(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    coordinator = Coordinator(transport, store, CoordinatorConfig(id="doomed"))
    await coordinator.__aenter__()
    run = await coordinator.submit(one_step_plan())
    await coordinator.abort()
    record = await store.get_run(run.run_id)
    assert record is not None and record.owner == "doomed" and not record.status.finished
    assert record.lease_until is not None and record.lease_until > 0  # not released
    assert coordinator.active_runs == []
    with pytest.raises(AexecError, match="not running"):
        await coordinator.submit(one_step_plan())
    await coordinator.__aexit__(None, None, None)  # after abort(), leaving does nothing
    await coordinator.abort()  # nor does aborting again


async def test_a_bug_in_a_coordinator_task_stops_it_fails_its_runs_and_is_raised_on_exit(
    transport: MemoryTransport,
) -> None:
    store = BuggyStore()
    await store.open()
    coordinator = Coordinator(transport, store, CoordinatorConfig(lease=0.03))
    with pytest.raises(ExceptionGroup) as raised:  # on leaving the coordinator
        async with coordinator:
            run = await coordinator.submit(one_step_plan())
            store.broken = True  # the lease keeper's next renewal fails
            with pytest.raises(AexecError, match="a bug in renew_leases"):
                await asyncio.wait_for(asyncio.shield(run.done), 10)
            with pytest.raises(AexecError, match="stopped"):
                await coordinator.submit(one_step_plan())
    assert [str(e) for e in raised.value.exceptions] == ["a bug in renew_leases"]
    await store.close()


async def test_an_aborted_worker_puts_its_unacked_steps_back_for_another_worker(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    calls: list[str] = []
    never = asyncio.Event()

    @step
    async def long() -> str:
        calls.append("x")
        if len(calls) == 1:
            await never.wait()  # runs until its worker is aborted
        return "done"

    @pipeline
    def p() -> object:
        return long()

    compiled = p.compile()
    objects = MemoryObjectStore()
    quick = dict(heartbeat_interval=0.05, ack_after=60.0)  # the delivery stays unacked
    async with Coordinator(transport, store) as coordinator:
        doomed = Worker(transport, objects, compiled.steps, WorkerConfig(name="doomed", **quick))
        async with doomed:
            await doomed.serve("default")
            run = await coordinator.submit(compiled.plan)
            async for event in coordinator.events(run.run_id):
                if event.kind is EventKind.STEP_STARTED:
                    break
            await doomed.abort()
            assert doomed.in_flight == 0 and doomed.queues == []
            async with Worker(
                transport, objects, compiled.steps, WorkerConfig(name="heir", **quick)
            ) as heir:
                await heir.serve("default")
                status = await asyncio.wait_for(asyncio.shield(run.done), 10)
    assert status is RunStatus.SUCCEEDED
    assert calls == ["x", "x"]
    (record,) = await store.get_steps(run.run_id)
    # The same attempt, redelivered: the aborted worker sent no completion for it.
    assert record.status is StepStatus.SUCCEEDED and record.attempts == 1


async def test_a_bug_in_a_worker_task_stops_the_worker_which_gives_its_steps_back(
    store: MemoryStore,
) -> None:
    transport = BuggyHeartbeats("buggy")
    await transport.open()
    calls: list[str] = []
    never = asyncio.Event()

    @step
    async def long() -> str:
        calls.append("x")
        if len(calls) == 1:
            await never.wait()  # runs until its worker's heartbeat hits the bug
        return "done"

    @pipeline
    def p() -> object:
        return long()

    compiled = p.compile()
    objects = MemoryObjectStore()
    quick = dict(heartbeat_interval=0.05, ack_after=60.0)
    async with Coordinator(transport, store) as coordinator:
        buggy = Worker(transport, objects, compiled.steps, WorkerConfig(name="buggy", **quick))
        with pytest.raises(ExceptionGroup) as raised:  # on leaving the worker
            async with buggy:
                await buggy.serve("default")
                run = await coordinator.submit(compiled.plan)
                await asyncio.wait_for(buggy.terminated.wait(), 10)  # asks to be stopped
                assert buggy.in_flight == 0 and buggy.queues == []
                async with Worker(
                    transport, objects, compiled.steps, WorkerConfig(name="heir", **quick)
                ) as heir:
                    await heir.serve("default")
                    status = await asyncio.wait_for(asyncio.shield(run.done), 10)
    assert [str(e) for e in raised.value.exceptions] == ["a bug in publish"]
    assert status is RunStatus.SUCCEEDED
    assert calls == ["x", "x"]
    await transport.close()
