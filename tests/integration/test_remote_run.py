"""A remote client's view of its run (``Executor(remote=True)``), over RabbitMQ, beside the
coordinator service's store: the same log from run_submitted on, the same step rows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aexec import pipeline, remote_step
from aexec.config import Settings
from aexec.events import Event, EventKind
from aexec.executor import Executor

pytestmark = pytest.mark.rabbitmq

WAIT = 30.0

nobody = remote_step("nobody_serves_this", queue="unserved")
served = remote_step("served_later", queue="unserved")


@pipeline
def unserved() -> object:
    return served(nobody())


async def test_a_remote_run_shows_the_log_the_store_keeps_from_run_submitted_on(
    amqp_url: str, amqp_prefix: str, tmp_path: Path
) -> None:
    common = {"broker": amqp_url, "objects": f"file://{tmp_path / 'objects'}"}
    service = Executor(
        Settings(store=f"sqlite:///{tmp_path / 'runs.db'}", queue_prefix=amqp_prefix, **common)
    )
    client = Executor(Settings(remote=True, queue_prefix=amqp_prefix, **common))
    stop, ready = asyncio.Event(), asyncio.Event()
    async with asyncio.timeout(WAIT), service, client:
        serving = asyncio.create_task(service.serve(stop, grace=1.0, ready=ready))
        try:
            await ready.wait()
            run = await client.submit(unserved, priority=2)
            seen: list[Event] = []
            async for event in run.events():
                seen.append(event)
                if event.kind is EventKind.STEP_DISPATCHED:
                    await run.cancel()  # nobody serves the step: end the run here
            record = await run.wait()
        finally:
            stop.set()
            await serving
        logged = await service.get_events(run.run_id)
        steps = await service.get_steps(run.run_id)
        stored = await service.get_run(run.run_id)

    assert seen[0].kind is EventKind.RUN_SUBMITTED
    assert seen[0].data == {"priority": 2, "steps": 2, "notify": client._notify_queue}
    assert [(e.seq, e.kind, e.step, e.attempt, e.data) for e in seen] == [
        (e.seq, e.kind, e.step, e.attempt, e.data) for e in logged
    ]
    assert await run.steps() == steps
    assert stored is not None
    assert (record.status, record.finished_at, record.error) == (
        stored.status,
        stored.finished_at,
        stored.error,
    )


async def test_a_remote_runs_tags_reach_the_services_store(
    amqp_url: str, amqp_prefix: str, tmp_path: Path
) -> None:
    common = {"broker": amqp_url, "objects": f"file://{tmp_path / 'objects'}"}
    service = Executor(
        Settings(store=f"sqlite:///{tmp_path / 'runs.db'}", queue_prefix=amqp_prefix, **common)
    )
    client = Executor(Settings(remote=True, queue_prefix=amqp_prefix, **common))
    stop, ready = asyncio.Event(), asyncio.Event()
    async with asyncio.timeout(WAIT), service, client:
        serving = asyncio.create_task(service.serve(stop, grace=1.0, ready=ready))
        try:
            await ready.wait()
            run = await client.submit(unserved, tags={"team": "data"})
            async for event in run.events():
                if event.kind is EventKind.STEP_DISPATCHED:
                    await run.cancel()
            await run.wait()
        finally:
            stop.set()
            await serving
        stored = await service.get_run(run.run_id)
        tagged = await service.list_runs(tag=("team", "data"))
    assert stored is not None and stored.tags == {"team": "data"}
    assert [r.run_id for r in tagged] == [run.run_id]
