"""Fencing and takeovers on the in-memory adapters: a coordinator that lost a run can no
longer change it, its replies reach the run's new owner, its waiters follow the run to its
end, and a takeover spends no retry and orphans no run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping

import pytest

from aexec import messages, pipeline, step
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.errors import AexecError, StoreUnavailableError
from aexec.events import EventKind
from aexec.objects.memory import MemoryObjectStore
from aexec.plan import Plan
from aexec.run import LocalRun
from aexec.store import RunRecord
from aexec.store.memory import MemoryStore
from aexec.strays import Stray, Strays
from aexec.testing import wait_for_event
from aexec.transport import DEAD_LETTER_QUEUE, Delivery
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus, StepStatus
from aexec.worker import Worker, WorkerConfig

WAIT = 10.0
QUICK = WorkerConfig(name="w", heartbeat_interval=0.05, ack_after=0.1)


class StalledRenewals(MemoryStore):
    """A store whose lease renewals hang once ``stalled`` is set: a coordinator whose pool
    is exhausted, whose loop is blocked, or that a peer sees as partitioned."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = False
        self._never = asyncio.Event()

    async def renew_leases(
        self, owner: str, lease: float, held: Mapping[str, int] | None = None
    ) -> set[str]:
        if self.stalled:
            await self._never.wait()
        return await super().renew_leases(owner, lease, held)


class FlakyPlans(MemoryStore):
    """A store whose next ``failures`` plan reads fail as a database blip would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def get_plan(self, digest: str) -> Plan | None:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailableError("connection lost (a blip)")
        return await super().get_plan(digest)


@pytest.fixture
async def transport() -> AsyncIterator[MemoryTransport]:
    t = MemoryTransport()
    await t.open()
    yield t
    await t.close()


async def lease_lapsed(store: MemoryStore, run_id: str) -> None:
    """Return once the run's lease has ended (leases end with time, not with an event)."""
    record = await store.get_run(run_id)
    assert record is not None and record.lease_until is not None
    await asyncio.sleep(max(0.0, record.lease_until - time.time()) + 0.05)


def gated_chain(gate: asyncio.Event, executions: list[str]) -> tuple[Plan, dict[str, object]]:
    """``first`` (which waits for ``gate``) → ``second``; both note each execution."""

    @step
    async def first() -> int:
        executions.append("first")
        await gate.wait()
        return 1

    @step
    async def second(x: int) -> int:
        executions.append("second")
        return x + 1

    @pipeline
    def p() -> object:
        return second(first())

    compiled = p.compile()
    return compiled.plan, dict(compiled.steps)


async def test_a_coordinator_that_lost_its_run_records_and_dispatches_nothing_more(
    transport: MemoryTransport,
) -> None:
    gate, executions = asyncio.Event(), []
    plan, steps = gated_chain(gate, executions)
    store = StalledRenewals()
    await store.open()
    forwarded: asyncio.Queue[bytes] = asyncio.Queue()

    async def owner_b(delivery: Delivery) -> None:  # the reply queue of coordinator "B"
        await delivery.ack()
        await forwarded.put(delivery.body)

    await transport.declare_queue("reply.B")
    await transport.consume("reply.B", owner_b, prefetch=100)
    worker = Worker(transport, MemoryObjectStore(), steps, QUICK)  # type: ignore[arg-type]
    async with (
        asyncio.timeout(WAIT),
        worker,
        Coordinator(transport, store, CoordinatorConfig(id="A", lease=0.3)) as a,
    ):
        await worker.serve("default")
        try:
            run = await a.submit(plan)
            await wait_for_event(store.follow(run.run_id), EventKind.STEP_STARTED, step="first")
            store.stalled = True  # A cannot renew any more...
            await lease_lapsed(store, run.run_id)
            [claimed] = await store.acquire_runs("B", 30.0)  # ...and B claims the run
            assert claimed.run_id == run.run_id
            before = await store.get_events(run.run_id)
        finally:
            gate.set()  # first completes: its completion reaches A
        while True:  # B is sent what A may no longer record
            msg = messages.decode(await forwarded.get())
            if isinstance(msg, messages.Completion):
                break
        with pytest.raises(AexecError):  # a LeaseLostError
            await asyncio.shield(run.done)
        assert (msg.run_id, msg.step_key, msg.attempt, msg.error) == (run.run_id, "first", 1, None)
        assert a.active_runs == []
    assert await store.get_events(run.run_id) == before  # A wrote nothing after the takeover
    assert executions == ["first"]  # and dispatched nothing: second never ran
    steps_now = {s.key: s.status for s in await store.get_steps(run.run_id)}
    assert steps_now == {"first": StepStatus.RUNNING, "second": StepStatus.PENDING}
    await store.close()


async def test_a_run_taken_over_from_a_live_coordinator_finishes_once_and_its_waiters_follow_it(
    transport: MemoryTransport,
) -> None:
    gate, executions = asyncio.Event(), []
    plan, steps = gated_chain(gate, executions)
    store = StalledRenewals()
    await store.open()
    objects = MemoryObjectStore()
    fast = dict(lease=0.3, worker_timeout=5.0)
    worker = Worker(transport, objects, steps, QUICK)  # type: ignore[arg-type]
    async with (
        asyncio.timeout(WAIT),
        worker,
        Coordinator(transport, store, CoordinatorConfig(id="A", **fast)) as a,
    ):
        await worker.serve("default")
        active = await a.submit(plan)
        run = LocalRun(a, active, store, objects)
        await wait_for_event(store.follow(run.run_id), EventKind.STEP_STARTED, step="first")
        store.stalled = True  # A is alive, but its leases lapse
        heir = Coordinator(transport, store, CoordinatorConfig(id="B", adopt=True, **fast))
        async with heir:
            try:
                resumed = await wait_for_event(store.follow(run.run_id), EventKind.RUN_RESUMED)
                assert resumed.data == {"coordinator": "B", "previous": "A"}
            finally:
                gate.set()
            record = await run.wait()  # A's waiter: followed through the store
            kinds = [e.kind async for e in run.events()]
    assert record.status is RunStatus.SUCCEEDED and record.owner == "B"
    assert await run.result() == 2
    assert kinds[-1] is EventKind.RUN_SUCCEEDED
    assert sorted(executions) == ["first", "second"]  # each step ran once
    logged = await store.get_events(run.run_id)
    succeeded = [(e.step, e.attempt) for e in logged if e.kind is EventKind.STEP_SUCCEEDED]
    assert sorted(succeeded) == [("first", 1), ("second", 1)]
    await store.close()


async def test_runs_claimed_by_a_takeover_that_failed_half_way_are_taken_over_again(
    transport: MemoryTransport,
) -> None:
    @step
    async def only() -> str:
        return "done"

    @pipeline
    def p() -> object:
        return only()

    compiled = p.compile()
    store = FlakyPlans(failures=1)  # the heir's first plan read fails: a blip
    await store.open()
    fast = dict(lease=0.3, worker_timeout=5.0)
    doomed = Coordinator(transport, store, CoordinatorConfig(id="doomed", **fast))
    await doomed.__aenter__()
    runs = [await doomed.submit(compiled.plan) for _ in range(3)]  # no worker: queued
    await doomed.abort()
    async with (
        Coordinator(transport, store, CoordinatorConfig(id="heir", adopt=True, **fast)),
        Worker(transport, MemoryObjectStore(), compiled.steps) as worker,
    ):
        await worker.serve("default")
        async with asyncio.timeout(WAIT):
            for run in runs:
                ended = await wait_for_event(store.follow(run.run_id), EventKind.RUN_SUCCEEDED)
                assert ended.run_id == run.run_id
    for run in runs:
        record = await store.get_run(run.run_id)
        assert record is not None and record.owner == "heir"
    await store.close()


async def test_a_step_dispatched_again_by_a_takeover_keeps_all_its_retries(
    transport: MemoryTransport,
) -> None:
    executions: list[int] = []

    @step(retries=1, retry_backoff=0.0)
    async def shaky() -> str:
        executions.append(len(executions) + 1)
        if len(executions) == 1:
            raise ValueError("the first execution fails")
        return "done"

    @pipeline
    def p() -> object:
        return shaky()

    compiled = p.compile()
    store = MemoryStore()
    await store.open()
    fast = dict(lease=0.3, worker_timeout=5.0)
    doomed = Coordinator(transport, store, CoordinatorConfig(id="doomed", **fast))
    await doomed.__aenter__()
    run = await doomed.submit(compiled.plan)  # no worker yet: attempt 1 stays queued
    await wait_for_event(store.follow(run.run_id), EventKind.STEP_DISPATCHED)
    await doomed.abort()
    await transport.delete_queues(["step.default"])  # as if attempt 1 never reached it
    async with (
        Coordinator(transport, store, CoordinatorConfig(id="heir", adopt=True, **fast)),
        Worker(transport, MemoryObjectStore(), compiled.steps) as worker,
    ):
        await worker.serve("default")
        async with asyncio.timeout(WAIT):
            ended = [e.kind async for e in store.follow(run.run_id)][-1]
    assert ended is EventKind.RUN_SUCCEEDED  # attempt 2 failed, and was retried as attempt 3
    (record,) = await store.get_steps(run.run_id)
    assert (record.status, record.attempts, record.failures) == (StepStatus.SUCCEEDED, 3, 1)
    assert executions == [1, 2]
    await store.close()


async def test_a_stray_reply_for_a_run_nobody_holds_is_handed_back_until_its_owner_takes_it(
    transport: MemoryTransport,
) -> None:
    gate, executions = asyncio.Event(), []
    plan, _ = gated_chain(gate, executions)
    store = MemoryStore()
    await store.open()
    expired = time.time() - 1.0
    await store.create_run(
        RunRecord("r1", plan.pipeline, plan.digest, owner="dead", lease_until=expired), plan
    )
    strays = Strays(store, transport, "me", delay=0.01, max_delay=0.05)
    forwarded: asyncio.Queue[bytes] = asyncio.Queue()
    deliveries: asyncio.Queue[Delivery] = asyncio.Queue()

    async def owner_b(delivery: Delivery) -> None:
        await delivery.ack()
        await forwarded.put(delivery.body)

    async def old_queue(delivery: Delivery) -> None:
        await deliveries.put(delivery)

    for queue, handler in (("reply.B", owner_b), ("reply.dead", old_queue)):
        await transport.declare_queue(queue)
        await transport.consume(queue, handler, prefetch=10)
    completion = messages.Completion("r1", "first", 1, b"\x01", None, "w", 0.0, 0.0, "i")
    unknown = messages.Completion("ghost", "first", 1, b"\x01", None, "w", 0.0, 0.0, "i")
    await transport.publish("reply.dead", completion.encode())
    await transport.publish("reply.dead", unknown.encode())
    async with asyncio.timeout(WAIT):
        first, ghost = await deliveries.get(), await deliveries.get()
        await strays.handle([Stray(completion, first), Stray(unknown, ghost)])
        again = await deliveries.get()  # nobody holds r1: it came back, and only it
        assert again.redelivered and again.body == completion.encode()
        assert transport.queue_depth(DEAD_LETTER_QUEUE) == 1  # the unknown run's reply
        await store.acquire_runs("B", 30.0)  # now B does
        await strays.handle([Stray(completion, again)])
        assert await forwarded.get() == completion.encode()
    assert transport.queue_depth("reply.dead") == 0 and deliveries.empty()
    await store.close()
