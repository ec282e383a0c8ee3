"""Poison is local, on the in-memory adapters: what the store refuses for good fails the one
run it belongs to; a submission the store cannot take now is taken again, one refused for
good is dead-lettered and its client told; absurd run ids are refused where they enter."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from aexec import messages, pipeline, step
from aexec.coordinator import Coordinator
from aexec.errors import CodecError, RunFailedError, StoreError, StoreUnavailableError
from aexec.events import Event, EventKind, from_record
from aexec.objects.memory import MemoryObjectStore
from aexec.plan import Plan
from aexec.run import RemoteRun
from aexec.store import RunRecord
from aexec.store.memory import MemoryStore
from aexec.transport import DEAD_LETTER_QUEUE, Delivery
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus
from aexec.wire import SUBMIT_QUEUE
from aexec.worker import Worker

WAIT = 10.0


class RefusesNul(MemoryStore):
    """Refuses for good any batch whose event data holds a NUL character, as PostgreSQL
    refused such text in a column."""

    async def append(self, events: Sequence[Event], **fenced: Any) -> None:
        for event in events:
            if "\\u0000" in json.dumps(event.data):
                raise StoreError("invalid byte sequence for encoding UTF8: 0x00")
        await super().append(events, **fenced)


class Blip(MemoryStore):
    """While ``down`` is set, every lookup and creation fails as an unreachable database
    would (``failed`` is set at the first such failure)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.failed = asyncio.Event()

    def _check_up(self) -> None:
        if self.down:
            self.failed.set()
            raise StoreUnavailableError("connection refused")

    async def get_run(self, run_id: str) -> RunRecord | None:
        self._check_up()
        return await super().get_run(run_id)

    async def owners(self, run_ids: Any) -> Any:
        self._check_up()
        return await super().owners(run_ids)

    async def create_run(self, run: RunRecord, plan: Plan, **options: Any) -> Event:
        self._check_up()
        return await super().create_run(run, plan, **options)


@pytest.fixture
async def transport() -> AsyncIterator[MemoryTransport]:
    t = MemoryTransport()
    await t.open()
    yield t
    await t.close()


@step
async def echo(text: str) -> str:
    return text


@step
async def refuse(text: str) -> str:
    raise ValueError(f"bad {text}")


@pipeline
def echoed(text: str) -> object:
    return echo(text)


@pipeline
def refused(text: str) -> object:
    return echo.alias("after")(refuse(text))


async def test_a_run_whose_events_the_store_refuses_fails_alone_and_the_others_go_on(
    transport: MemoryTransport,
) -> None:
    store = RefusesNul()
    await store.open()
    bad_plan = refused.compile(text="\x00 byte").plan
    async with (
        asyncio.timeout(WAIT),
        Coordinator(transport, store) as coordinator,
        Worker(transport, MemoryObjectStore(), {"echo": echo, "refuse": refuse}) as worker,
    ):
        await worker.serve("default")
        bad = await coordinator.submit(bad_plan)
        assert await asyncio.shield(bad.done) is RunStatus.FAILED
        good = await coordinator.submit(echoed.compile(text="fine").plan)
        assert await asyncio.shield(good.done) is RunStatus.SUCCEEDED
    record = await store.get_run(bad.run_id)
    assert record is not None and record.status is RunStatus.FAILED
    assert record.error is not None and "\n" not in record.error
    assert record.error.startswith("the run store refused this run's events (step_failed of step")
    assert "invalid byte sequence" in record.error
    kinds = [e.kind for e in await store.get_events(bad.run_id)]
    assert kinds[-1] is EventKind.RUN_FAILED
    await store.close()


async def submitted(transport: MemoryTransport, msg: messages.Submit, plan: Plan) -> RemoteRun:
    """Publish ``msg`` as a client does; its run as the client sees it."""

    async def no_cancel(run_id: str) -> None:
        raise AssertionError("not cancelled here")

    run = RemoteRun(msg.run_id, plan, msg.priority, objects=MemoryObjectStore(), cancel=no_cancel)
    assert msg.notify is not None

    async def receive(delivery: Delivery) -> None:
        await delivery.ack()
        events = messages.decode(delivery.body)
        assert isinstance(events, messages.Events)
        run.receive([from_record(events.run_id, r) for r in events.records])

    await transport.declare_queue(msg.notify, max_priority=0)
    await transport.consume(msg.notify, receive, prefetch=10)
    await transport.publish(SUBMIT_QUEUE, msg.encode())
    return run


async def dead_letters(transport: MemoryTransport) -> list[bytes]:
    dead: list[bytes] = []

    async def collect(delivery: Delivery) -> None:
        dead.append(delivery.body)
        await delivery.ack()

    await transport.consume(DEAD_LETTER_QUEUE, collect, prefetch=10)
    return dead


async def test_a_submission_during_a_database_blip_is_taken_again_not_dead_lettered(
    transport: MemoryTransport,
) -> None:
    store = Blip()
    await store.open()
    dead = await dead_letters(transport)
    plan = echoed.compile(text="hello").plan
    async with (
        asyncio.timeout(WAIT),
        Coordinator(transport, store) as coordinator,
        Worker(transport, MemoryObjectStore(), {"echo": echo}) as worker,
    ):
        await worker.serve("default")
        await coordinator.accept_submissions()
        store.down = True
        msg = messages.Submit(uuid.uuid4().hex, plan.to_bytes(), 0, "client.blip")
        run = await submitted(transport, msg, plan)
        await store.failed.wait()  # the coordinator met the blip
        store.down = False
        assert await run.result() == "hello"
    assert dead == []
    await store.close()


async def test_a_submission_refused_for_good_is_dead_lettered_and_its_client_told(
    transport: MemoryTransport,
) -> None:
    store = MemoryStore()
    await store.open()
    dead = await dead_letters(transport)
    plan = echoed.compile(text="hello").plan
    absurd = messages.Submit("x" * 300, plan.to_bytes(), 0, "client.absurd")
    garbled = messages.Submit(uuid.uuid4().hex, b"\x93 not a plan", 0, "client.garbled")
    async with asyncio.timeout(WAIT), Coordinator(transport, store) as coordinator:
        await coordinator.accept_submissions()
        runs = [await submitted(transport, msg, plan) for msg in (absurd, garbled)]
        for run, why in zip(runs, ("at most 255 characters", "plan"), strict=True):
            with pytest.raises(RunFailedError, match=f"submission refused: .*{why}") as failed:
                await run.result()
            assert "\n" not in str(failed.value)
    assert sorted(dead) == sorted([absurd.encode(), garbled.encode()])
    assert await store.list_runs() == []
    await store.close()


async def test_an_absurd_run_id_is_refused_by_the_library(transport: MemoryTransport) -> None:
    store = MemoryStore()
    await store.open()
    plan = echoed.compile(text="hello").plan
    async with Coordinator(transport, store) as coordinator:
        for run_id in ("x" * 8000, "line\nbreak", ""):
            with pytest.raises(CodecError, match="run id"):
                await coordinator.submit(plan, run_id=run_id)
        run = await coordinator.submit(plan, run_id="y" * 255)
        assert run.run_id == "y" * 255
    assert [r.run_id for r in await store.list_runs()] == ["y" * 255]
    await store.close()
