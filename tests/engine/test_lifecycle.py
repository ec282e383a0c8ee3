"""How the engine stops: cleanly, abruptly (``abort()``, as a crash would), or after a bug."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest

import aexec
from aexec import messages, pipeline, step
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.dsl import StepDef
from aexec.errors import AexecError, TransportError
from aexec.events import Event, EventKind
from aexec.objects.memory import MemoryObjectStore
from aexec.plan import Plan
from aexec.store.memory import MemoryStore
from aexec.stream import BUFFER
from aexec.transport import Delivery, Handler
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


@step(name="only")
async def one_step() -> str:
    return "done"


def one_step_plan() -> Plan:
    @pipeline
    def p() -> object:
        return one_step()

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


async def test_an_aborted_workers_unacked_step_goes_back_and_runs_again_as_a_new_attempt(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    """The aborted worker's unacked delivery goes back to the broker, marked redelivered.
    The heir does not run it (attempt 1 may have started: it did, on the aborted worker):
    it reports it, and once the aborted worker's heartbeats have lapsed the coordinator
    dispatches attempt 2, which the heir runs.  (Before issue 8 the heir ran attempt 1 a
    second time.)"""
    calls: list[int] = []
    never = asyncio.Event()

    @step
    async def long() -> str:
        calls.append(aexec.current().attempt)
        if len(calls) == 1:
            await never.wait()  # runs until its worker is aborted
        return "done"

    @pipeline
    def p() -> object:
        return long()

    compiled = p.compile()
    objects = MemoryObjectStore()
    quick = dict(heartbeat_interval=0.05, ack_after=60.0)  # the delivery stays unacked
    config = CoordinatorConfig(worker_timeout=0.3)
    async with Coordinator(transport, store, config) as coordinator:
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
    assert calls == [1, 2]
    (record,) = await store.get_steps(run.run_id)
    assert record.status is StepStatus.SUCCEEDED and record.attempts == 2


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
    assert calls == ["x", "x"]  # attempt 1 on the buggy worker, attempt 2 on its heir
    await transport.close()


class OneBuggyAppend(MemoryStore):
    """A store whose first append of a step's success hits a bug (not a backend error)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    async def append(self, events: Sequence[Event], **fenced: Any) -> None:
        if self.armed and any(e.kind is EventKind.STEP_SUCCEEDED for e in events):
            self.armed = False
            raise RuntimeError("a bug in append")
        await super().append(events, **fenced)


class SlowAppend(MemoryStore):
    """A store whose appends take a while (a slow database); ``appending`` is set when one
    starts."""

    def __init__(self) -> None:
        super().__init__()
        self.appending = asyncio.Event()

    async def append(self, events: Sequence[Event], **fenced: Any) -> None:
        self.appending.set()
        await asyncio.sleep(0.2)
        await super().append(events, **fenced)


class NoTopics(MemoryTransport):
    """A transport whose broadcasts cannot be subscribed to (a broker fault)."""

    async def subscribe(self, topic: str, handler: Handler) -> Any:
        raise TransportError("cannot subscribe now")


def chain_plan(steps: dict[str, StepDef[Any, Any]]) -> Plan:
    @step
    async def first() -> int:
        return 1

    @step
    async def second(x: int) -> int:
        return x + 1

    @pipeline
    def p() -> object:
        return second(first())

    compiled = p.compile()
    steps.update(compiled.steps)
    return compiled.plan


async def test_a_scheduler_pass_that_fails_gives_its_deliveries_back_and_its_runs_go_on(
    transport: MemoryTransport,
) -> None:
    store = OneBuggyAppend()
    await store.open()
    steps: dict[str, StepDef[Any, Any]] = {}
    plan = chain_plan(steps)
    async with (
        asyncio.timeout(10),
        Coordinator(transport, store) as coordinator,
        Worker(transport, MemoryObjectStore(), steps) as worker,
    ):
        await worker.serve("default")
        run = await coordinator.submit(plan)
        assert await asyncio.shield(run.done) is RunStatus.SUCCEEDED
    assert not store.armed  # the bug was hit, and the run recovered from the store
    kinds = [e.kind for e in await store.get_events(run.run_id)]
    assert EventKind.RUN_RESUMED in kinds and kinds[-1] is EventKind.RUN_SUCCEEDED
    await store.close()


async def test_leaving_an_embedded_coordinator_mid_pass_commits_what_the_pass_decided(
    transport: MemoryTransport,
) -> None:
    store = SlowAppend()
    await store.open()
    config = CoordinatorConfig(durable_dispatch=False, durable_replies=False, flush_interval=60)
    async with Worker(transport, MemoryObjectStore()) as worker:
        coordinator = Coordinator(transport, store, config, on_queue=worker.serve)
        await coordinator.__aenter__()
        plan = one_step_plan()
        worker.add_steps([one_step])
        run = await coordinator.submit(plan)
        await store.appending.wait()  # the run ended: the pass commits it, slowly
        await coordinator.__aexit__(None, None, None)
    kinds = [e.kind for e in await store.get_events(run.run_id)]
    assert kinds[-1] is EventKind.RUN_SUCCEEDED
    assert run.done.result() is RunStatus.SUCCEEDED
    await store.close()


async def test_a_coordinator_that_cannot_subscribe_consumes_nothing(store: MemoryStore) -> None:
    transport = NoTopics()
    await transport.open()
    coordinator = Coordinator(transport, store, CoordinatorConfig(id="c", durable_replies=True))
    with pytest.raises(TransportError, match="cannot subscribe"):
        await coordinator.__aenter__()
    await transport.publish(coordinator.reply_queue, b"probe")
    assert transport.queue_depth(coordinator.reply_queue) == 1  # no consumer took it
    await transport.close()


async def test_a_coordinator_stopped_by_a_bug_says_so_through_stopped(
    transport: MemoryTransport,
) -> None:
    store = BuggyStore()
    await store.open()
    coordinator = Coordinator(transport, store, CoordinatorConfig(lease=0.03))
    with pytest.raises(ExceptionGroup):
        async with coordinator:
            await coordinator.submit(one_step_plan())
            store.broken = True
            with pytest.raises(AexecError, match="a bug in renew_leases"):
                await asyncio.wait_for(coordinator.stopped, 10)
    await store.close()


async def test_a_clean_exit_resolves_stopped(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    coordinator = Coordinator(transport, store)
    async with coordinator:
        assert not coordinator.stopped.done()
    assert coordinator.stopped.result() is None


async def test_a_reader_that_stops_reading_holds_a_bounded_buffer_then_catches_up(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    @step
    async def noop() -> None:
        return None

    @pipeline
    def wide() -> object:
        return [noop.alias(f"n{i}")() for i in range(700)]  # some 1,400 events

    compiled = wide.compile()
    async with (
        asyncio.timeout(20),
        Coordinator(transport, store) as coordinator,
        Worker(transport, MemoryObjectStore(), compiled.steps) as worker,
    ):
        await worker.serve("default")
        run = await coordinator.submit(compiled.plan)
        reader = coordinator.events(run.run_id)
        first = await anext(reader)  # then it stops reading while the run goes on
        assert await asyncio.shield(run.done) is RunStatus.SUCCEEDED
        (buffer,) = run.subscribers
        assert len(buffer) <= BUFFER
        rest = [event async for event in reader]
    logged = await store.get_events(run.run_id)
    assert len(logged) > BUFFER
    assert [e.seq for e in [first, *rest]] == [e.seq for e in logged]  # none lost, none twice


async def test_serving_until_stopped_raises_the_failure_that_stopped_the_coordinator_first(
    transport: MemoryTransport,
) -> None:
    store = BuggyStore()
    await store.open()
    coordinator = Coordinator(transport, store, CoordinatorConfig(lease=0.03))
    stop = asyncio.Event()
    with pytest.raises(ExceptionGroup):
        async with coordinator:
            await coordinator.submit(one_step_plan())
            store.broken = True
            with pytest.raises(AexecError, match="a bug in renew_leases"):
                await asyncio.wait_for(coordinator.until(stop), 10)
    await store.close()


async def test_serving_until_stopped_returns_once_stop_is_set(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    stop = asyncio.Event()
    async with Coordinator(transport, store) as coordinator:
        serving = asyncio.ensure_future(coordinator.until(stop))
        stop.set()
        await asyncio.wait_for(serving, 10)
        assert not coordinator.stopped.done()
