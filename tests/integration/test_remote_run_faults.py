"""A remote client learns how its run ended whoever ends it, over RabbitMQ: the coordinator
that takes the run over sends it the run's events (the client's queue is kept with the
run), and a client that missed the end catches up from the runs-ended announcements."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import aexec.executor
import aexec.transport
from aexec import pipeline, step
from aexec.batch import ActiveRun
from aexec.config import Settings
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.events import Event, EventKind
from aexec.executor import Executor
from aexec.objects.fs import FileObjectStore
from aexec.store.sqlite import SqliteStore
from aexec.testing import wait_for_event
from aexec.transport import Transport
from aexec.types import RunStatus
from aexec.worker import Worker, WorkerConfig

pytestmark = pytest.mark.rabbitmq

WAIT = 30.0
GATE = asyncio.Event()


@step
async def gate() -> int:
    await GATE.wait()
    return 20


@step
async def plus_one(x: int) -> int:
    return x + 1


@pipeline
def gated() -> object:
    return plus_one(gate())


class Forgetful(Coordinator):
    """Never sends a client its run's end (as a coordinator killed right after recording
    it would)."""

    async def notify(self, run: ActiveRun, events: list[Event]) -> None:
        await super().notify(run, [e for e in events if not e.kind.ends_run])


@pytest.fixture
async def opened(amqp_url: str, amqp_prefix: str) -> AsyncIterator[list[Transport]]:
    transports = [aexec.transport.from_url(amqp_url, prefix=amqp_prefix) for _ in range(3)]
    for transport in transports:
        await transport.open()
    try:
        yield transports
    finally:
        for transport in transports:
            await transport.close()


async def test_a_remote_clients_run_taken_over_by_another_coordinator_tells_the_client(
    amqp_url: str, amqp_prefix: str, tmp_path: Path, opened: list[Transport]
) -> None:
    GATE.clear()
    doomed_transport, heir_transport, worker_transport = opened
    store = SqliteStore(tmp_path / "runs.db")
    objects = FileObjectStore(tmp_path / "objects")
    client = Executor(
        Settings(
            remote=True,
            broker=amqp_url,
            queue_prefix=amqp_prefix,
            objects=f"file://{tmp_path / 'objects'}",
        )
    )
    fast = {"lease": 0.5, "worker_timeout": 5.0, "adopt": True}
    worker = Worker(
        worker_transport,
        objects,
        gated.compile().steps,
        WorkerConfig(name="w", heartbeat_interval=0.1, ack_after=0.2),
    )
    async with asyncio.timeout(WAIT), store, client, worker:
        await worker.serve("default")
        doomed = Coordinator(doomed_transport, store, CoordinatorConfig(id="doomed", **fast))
        await doomed.__aenter__()
        try:
            await doomed.accept_submissions()
            run = await client.submit(gated)
            async for event in run.events():
                if event.kind is EventKind.STEP_STARTED:
                    break
        finally:
            await doomed.abort()  # as SIGKILL would
        heir = Coordinator(heir_transport, store, CoordinatorConfig(id="heir", **fast))
        async with heir:
            await wait_for_event(store.follow(run.run_id), EventKind.RUN_RESUMED)
            GATE.set()
            assert await run.result() == 21
        kinds = [e.kind for e in await store.get_events(run.run_id)]
    assert kinds.count(EventKind.RUN_RESUMED) == 1


async def test_a_client_that_missed_its_runs_end_catches_up_from_the_announcements(
    amqp_url: str, amqp_prefix: str, tmp_path: Path, opened: list[Transport]
) -> None:
    GATE.set()
    service_transport, worker_transport, _ = opened
    store = SqliteStore(tmp_path / "runs.db")
    client = Executor(
        Settings(
            remote=True,
            broker=amqp_url,
            queue_prefix=amqp_prefix,
            objects=f"file://{tmp_path / 'objects'}",
        )
    )
    worker = Worker(worker_transport, FileObjectStore(tmp_path / "objects"), gated.compile().steps)
    service = Forgetful(service_transport, store, CoordinatorConfig(id="forgetful"))
    async with asyncio.timeout(WAIT), store, client, worker, service:
        await worker.serve("default")
        await service.accept_submissions()
        run = await client.submit(gated)
        assert await run.result() == 21
        events = [e async for e in run.events()]
        logged = await store.get_events(run.run_id)
    assert events[-1].kind is EventKind.RUN_SUCCEEDED
    assert [e.seq for e in events] == [e.seq for e in logged]


class Silent(Forgetful):
    """Never tells anyone a run ended: no end sent to the client, no announcement either
    (as a coordinator killed right after recording the end)."""

    async def _announce_ended(self, runs: list[tuple[str, RunStatus]]) -> None:
        return None


async def test_a_client_told_nothing_of_its_runs_end_asks_once_the_run_is_silent(
    amqp_url: str,
    amqp_prefix: str,
    tmp_path: Path,
    opened: list[Transport],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aexec.executor, "SILENCE", 0.5)
    GATE.set()
    service_transport, worker_transport, _ = opened
    store = SqliteStore(tmp_path / "runs.db")
    client = Executor(
        Settings(
            remote=True,
            broker=amqp_url,
            queue_prefix=amqp_prefix,
            objects=f"file://{tmp_path / 'objects'}",
        )
    )
    worker = Worker(worker_transport, FileObjectStore(tmp_path / "objects"), gated.compile().steps)
    service = Silent(service_transport, store, CoordinatorConfig(id="silent"))
    async with asyncio.timeout(WAIT), store, client, worker, service:
        await worker.serve("default")
        await service.accept_submissions()
        run = await client.submit(gated)
        assert await run.result() == 21
