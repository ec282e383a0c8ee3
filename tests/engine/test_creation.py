"""A new run is created in the commit of its first dispatches (issue 15, round trip item 1):
one store transaction before its first step message leaves instead of two.  A coordinator
that dies before that commit recorded and sent nothing of the run, and its submitter gets
an error; one that dies after it and before the publish leaves a run that another
coordinator takes over and finishes; a creation the store refuses is raised to its
submitter and costs the other runs of the pass nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from aexec import messages, pipeline, step
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.errors import AexecError, StoreError, StoreUnavailableError
from aexec.events import Event, EventKind
from aexec.objects.memory import MemoryObjectStore
from aexec.plan import Plan
from aexec.store import RunRecord
from aexec.store.memory import MemoryStore
from aexec.testing import wait_for_event
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus, StepStatus
from aexec.wire import step_queue
from aexec.worker import Worker

WAIT = 10.0
FAST = {"lease": 0.3, "worker_timeout": 2.0}


@step
async def only() -> str:
    return "done"


@pipeline
def single() -> object:
    return only()


class Writes(MemoryStore):
    """Notes every transaction that writes (``create_run``, ``append``), and can hold the
    next append that creates a run before it commits (``hold_before``) or after
    (``hold_after``), refuse the first run it is asked to create, whenever asked again
    (``refuse_first``), or fail as unavailable (``unavailable`` times)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, list[EventKind]]] = []
        self.hold_before = self.hold_after = False
        self.held = asyncio.Event()
        self.refuse_first = False
        self.refused: str | None = None  # the first run offered after refuse_first was set
        self.unavailable = 0

    async def create_run(self, run: RunRecord, plan: Plan, *, notify: str | None = None) -> Event:
        self.writes.append(("create_run", [EventKind.RUN_SUBMITTED]))
        return await super().create_run(run, plan, notify=notify)

    async def append(self, events: Sequence[Event], **options: Any) -> None:
        created = options.get("created", ())
        if created and self.unavailable:
            self.unavailable -= 1
            raise StoreUnavailableError("the database is away")
        if created and self.refuse_first and self.refused is None:
            self.refused = created[0][0].run_id
        if self.refused is not None and self.refused in {r.run_id for r, _ in created}:
            raise StoreError(f"run {self.refused!r} refused")
        if created and self.hold_before:
            self.held.set()
            await asyncio.Event().wait()  # until the coordinator is aborted
        await super().append(events, **options)
        if events:
            self.writes.append(("append", [e.kind for e in events]))
        if created and self.hold_after:
            self.held.set()
            await asyncio.Event().wait()


class Published(MemoryTransport):
    """The memory broker, noting what the store held when each step message went out."""

    def __init__(self, store: Writes) -> None:
        super().__init__()
        self.store = store
        self.writes_at_publish: list[int] = []

    async def publish_many(self, batch: Sequence[tuple[str, Any, int]]) -> None:
        for _, body, _ in batch:  # handed over as objects, or encoded
            if isinstance(body, messages.StepMessage) or isinstance(
                messages.decode(body), messages.StepMessage
            ):
                self.writes_at_publish.append(len(self.store.writes))
        await super().publish_many(batch)


@pytest.fixture
async def store() -> AsyncIterator[Writes]:
    s = Writes()
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def transport(store: Writes) -> AsyncIterator[Published]:
    t = Published(store)
    await t.open()
    yield t
    await t.close()


async def queued(transport: MemoryTransport) -> int:
    """How many step messages wait in the default step queue."""
    return (await transport.queue_depths([step_queue("default")])).get(step_queue("default"), 0)


async def test_a_run_is_created_in_the_one_commit_before_its_first_step_goes_out(
    store: Writes, transport: Published
) -> None:
    compiled = single.compile()
    objects = MemoryObjectStore()
    async with (
        Coordinator(transport, store, CoordinatorConfig(), objects=objects) as coordinator,
        Worker(transport, objects, compiled.steps) as worker,
    ):
        await worker.serve("default")
        run = await coordinator.submit(compiled.plan)
        assert await asyncio.wait_for(asyncio.shield(run.done), WAIT) is RunStatus.SUCCEEDED
    first, *_ = store.writes
    assert first == (
        "append",
        [EventKind.RUN_SUBMITTED, EventKind.RUN_STARTED, EventKind.STEP_DISPATCHED],
    )
    assert transport.writes_at_publish == [1]  # that commit, and none other, before it
    kinds = [e.kind for e in await store.get_events(run.run_id)]
    assert kinds[:3] == [EventKind.RUN_SUBMITTED, EventKind.RUN_STARTED, EventKind.STEP_DISPATCHED]
    assert kinds[-1] is EventKind.RUN_SUCCEEDED


async def test_a_coordinator_that_dies_before_the_commit_records_and_sends_nothing_and_says_so(
    store: Writes, transport: Published
) -> None:
    store.hold_before = True
    coordinator = Coordinator(transport, store, CoordinatorConfig(id="doomed"))
    await coordinator.__aenter__()
    submit = asyncio.ensure_future(coordinator.submit(single.compile().plan))
    await asyncio.wait_for(store.held.wait(), WAIT)
    await coordinator.abort()
    with pytest.raises(AexecError, match="stopped"):
        await asyncio.wait_for(submit, WAIT)
    assert await store.list_runs() == []
    assert store.writes == [] and transport.writes_at_publish == []
    assert await queued(transport) == 0


async def test_a_coordinator_that_dies_after_the_commit_leaves_a_run_its_heir_finishes(
    store: Writes, transport: Published
) -> None:
    compiled = single.compile()
    store.hold_after = True  # committed; the pass never gets to publish
    doomed = Coordinator(transport, store, CoordinatorConfig(id="doomed", **FAST))
    await doomed.__aenter__()
    submit = asyncio.ensure_future(doomed.submit(compiled.plan))
    await asyncio.wait_for(store.held.wait(), WAIT)
    await doomed.abort()
    with pytest.raises(AexecError):
        await asyncio.wait_for(submit, WAIT)  # its submitter was not told: it may not rely
    (record,) = await store.list_runs()
    assert record.owner == "doomed" and record.status is RunStatus.RUNNING
    assert transport.writes_at_publish == [] and await queued(transport) == 0
    store.hold_after = False
    async with (
        Coordinator(transport, store, CoordinatorConfig(id="heir", adopt=True, **FAST)),
        Worker(transport, MemoryObjectStore(), compiled.steps) as worker,
    ):
        await worker.serve("default")
        async with asyncio.timeout(30):
            await wait_for_event(store.follow(record.run_id), EventKind.RUN_SUCCEEDED)
    (step_record,) = await store.get_steps(record.run_id)
    assert step_record.status is StepStatus.SUCCEEDED
    kinds = [e.kind for e in await store.get_events(record.run_id)]
    assert kinds.count(EventKind.STEP_SUCCEEDED) == 1 and kinds.count(EventKind.RUN_SUBMITTED) == 1


async def test_a_creation_the_store_refuses_is_raised_and_the_other_runs_go_on(
    store: Writes, transport: Published
) -> None:
    compiled = single.compile()
    objects = MemoryObjectStore()
    async with (
        Coordinator(transport, store, CoordinatorConfig(), objects=objects) as coordinator,
        Worker(transport, objects, compiled.steps) as worker,
    ):
        await worker.serve("default")
        # Both are usually started by one pass; the store refuses one of them.
        store.refuse_first = True
        first = asyncio.ensure_future(coordinator.submit(compiled.plan))
        second = asyncio.ensure_future(coordinator.submit(compiled.plan))
        results = await asyncio.wait_for(
            asyncio.gather(first, second, return_exceptions=True), WAIT
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        (done,) = [r for r in results if not isinstance(r, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], StoreError)
        assert await asyncio.wait_for(asyncio.shield(done.done), WAIT) is RunStatus.SUCCEEDED
        refused = store.refused
        assert refused is not None and refused != done.run_id
        assert refused not in coordinator.runs
    assert await store.get_run(refused) is None
    assert [r.run_id for r in await store.list_runs()] == [done.run_id]
    assert len(transport.writes_at_publish) == 1  # the refused run's step never went out


async def test_while_the_store_is_unavailable_a_submit_waits_and_then_succeeds(
    store: Writes, transport: Published
) -> None:
    compiled = single.compile()
    objects = MemoryObjectStore()
    store.unavailable = 2
    config = CoordinatorConfig(retry_backoff=0.01)
    async with (
        Coordinator(transport, store, config, objects=objects) as coordinator,
        Worker(transport, objects, compiled.steps) as worker,
    ):
        await worker.serve("default")
        run = await asyncio.wait_for(coordinator.submit(compiled.plan), WAIT)
        assert await asyncio.wait_for(asyncio.shield(run.done), WAIT) is RunStatus.SUCCEEDED
    assert store.unavailable == 0
    assert transport.writes_at_publish == [1]
