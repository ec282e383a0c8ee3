"""Versioned remote steps: v1 and v2 workers serve one step name side by side; a pipeline
that asks for a version runs only on a worker serving it, one that does not takes either."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aexec import codec, pipeline, remote_step, step
from aexec.control import list_workers
from aexec.coordinator import Coordinator
from aexec.dsl import StepDef
from aexec.events import EventKind
from aexec.objects.memory import MemoryObjectStore
from aexec.service import served_queues
from aexec.store.memory import MemoryStore
from aexec.testing import wait_for_event
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus, StepStatus
from aexec.worker import Worker, WorkerConfig


@step(name="reconstruct", queue="repo", version="1")
def reconstruct_v1(url: str) -> str:
    return f"v1:{url}"


@step(name="reconstruct", queue="repo", version="2")
def reconstruct_v2(url: str) -> str:
    return f"v2:{url}"


def wanting(version: str | None) -> Any:
    reconstruct = remote_step("reconstruct", queue="repo", version=version)

    @pipeline(name=f"room_{version}")
    def room(url: str = "u") -> Any:
        return reconstruct(url=url)

    return room


@pytest.fixture
async def transport() -> AsyncIterator[MemoryTransport]:
    t = MemoryTransport()
    await t.open()
    yield t
    await t.close()


async def serving(transport: MemoryTransport, name: str, code: StepDef[Any, Any]) -> Worker:
    worker = Worker(transport, MemoryObjectStore(), {code.name: code}, WorkerConfig(name=name))
    await worker.__aenter__()
    for queue in served_queues([code], None):
        await worker.serve(queue)
    await worker.listen_for_control()
    return worker


def test_a_versioned_worker_serves_its_queue_and_the_queue_of_its_version() -> None:
    assert served_queues([reconstruct_v2], None) == ["repo", "repo@2"]
    assert served_queues([reconstruct_v2], ["other"]) == ["other"]


async def test_each_version_runs_only_where_it_is_served_and_no_version_takes_either(
    transport: MemoryTransport,
) -> None:
    store = MemoryStore()
    await store.open()
    v1 = await serving(transport, "v1", reconstruct_v1)
    v2 = await serving(transport, "v2", reconstruct_v2)
    try:
        async with Coordinator(transport, store) as coordinator:

            async def result(p: Any) -> Any:
                run = await coordinator.submit(p.compile().plan)
                assert await asyncio.wait_for(run.done, 10) is RunStatus.SUCCEEDED
                (record,) = await store.get_steps(run.run_id)
                return codec.decode(record.output or b"")

            for _ in range(3):
                assert await result(wanting("1")) == "v1:u"
                assert await result(wanting("2")) == "v2:u"
            assert await result(wanting(None)) in ("v1:u", "v2:u")

            # Version 3 nobody serves: it waits, visibly queued, and nothing else runs it.
            waiting = await coordinator.submit(wanting("3").compile().plan)
            events = coordinator.events(waiting.run_id)
            await wait_for_event(events, EventKind.STEP_DISPATCHED)
            (record,) = await store.get_steps(waiting.run_id)
            assert record.status is StepStatus.QUEUED
            await coordinator.cancel(waiting.run_id)
            await asyncio.wait_for(waiting.done, 10)

            answers = {w.name: w.steps for w in await list_workers(transport, wait=0.2)}
            assert answers == {
                "v1": ["reconstruct", "reconstruct@1"],
                "v2": ["reconstruct", "reconstruct@2"],
            }
    finally:
        await v1.__aexit__(None, None, None)
        await v2.__aexit__(None, None, None)
        await store.close()
