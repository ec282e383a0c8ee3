"""Coalesced completions over RabbitMQ (issue 15): steps that finish together on a worker
reach the coordinator in fewer messages than steps, their step messages are acked with
``multiple`` once those are confirmed, and a worker that dies between the two leaves its
step messages to the broker, which hands them to the next worker (redelivered: reported,
never run twice); every completion is recorded once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

import aexec
from aexec import pipeline, step
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.events import EventKind
from aexec.objects.fs import FileObjectStore
from aexec.store.sqlite import SqliteStore
from aexec.transport import Delivery
from aexec.transport.amqp import AmqpTransport
from aexec.types import RunStatus
from aexec.wire import step_queue
from aexec.worker import Worker, WorkerConfig

pytestmark = pytest.mark.rabbitmq

WAIT = 30.0
WIDTH = 50


class Gate:
    """Holds the ``WIDTH`` parallel steps until :meth:`open`, so that they finish together."""

    def __init__(self) -> None:
        self.waiting = 0
        self.all, self.opened = asyncio.Event(), asyncio.Event()

    async def __call__(self) -> None:
        self.waiting += 1
        if self.waiting == WIDTH:
            self.all.set()
        await self.opened.wait()


def fan_in(gate: Gate, runs: Counter[str]) -> aexec.Pipeline:
    @step
    async def part(i: int) -> int:
        runs[f"part{i}"] += 1
        await gate()
        return i

    @step
    async def total(values: list[int]) -> int:
        runs["total"] += 1
        return sum(values)

    @pipeline
    def p() -> object:
        return total([part.alias(f"part{i}")(i) for i in range(WIDTH)])

    return p


class DiesBeforeAcking(AmqpTransport):
    """A worker's broker connection that never acks step messages: the worker dies (is
    aborted by the test) right after its completions were confirmed."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(url, prefix=prefix, connect_timeout=5.0)
        self.died = asyncio.Event()

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        self.died.set()
        await asyncio.Event().wait()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "runs.db")
    await s.open()
    yield s
    await s.close()


async def opened(transport: AmqpTransport) -> AmqpTransport:
    await transport.open()
    return transport


async def succeeded_once(store: SqliteStore, run_id: str) -> bool:
    events = await store.get_events(run_id)
    succeeded = Counter(e.step for e in events if e.kind is EventKind.STEP_SUCCEEDED)
    return len(succeeded) == WIDTH + 1 and set(succeeded.values()) == {1}


async def test_steps_finishing_together_reach_the_coordinator_in_fewer_messages(
    amqp_url: str, amqp_prefix: str, tmp_path: Path, store: SqliteStore
) -> None:
    gate, runs = Gate(), Counter[str]()
    compiled = fan_in(gate, runs).compile()
    coordinator_transport = await opened(AmqpTransport(amqp_url, prefix=amqp_prefix))
    worker_transport = await opened(AmqpTransport(amqp_url, prefix=amqp_prefix))
    objects = FileObjectStore(tmp_path / "objects")
    try:
        async with (
            asyncio.timeout(WAIT),
            Coordinator(coordinator_transport, store) as coordinator,
            Worker(worker_transport, objects, compiled.steps, WorkerConfig(name="w")) as worker,
        ):
            await worker.serve("default")
            run = await coordinator.submit(compiled.plan)
            await gate.all.wait()
            gate.opened.set()
            assert await asyncio.shield(run.done) is RunStatus.SUCCEEDED
            # Every step message was acked (with ``multiple``, mostly): none waits or is held.
            await worker.drain()
            # Counted once drained: the coordinator may end the run before the worker has
            # the broker's confirm of the last completion (and counts it).
            sent = (worker.outbox.messages, worker.outbox.completions)
            depths = await coordinator_transport.queue_depths([step_queue("default")])
    finally:
        await worker_transport.close()
        await coordinator_transport.close()
    assert sent[1] == WIDTH + 1
    assert sent[0] < sent[1] // 2  # the fifty released together shared a few messages
    assert set(runs.values()) == {1}
    assert await succeeded_once(store, run.run_id)
    assert depths == {step_queue("default"): 0}


async def test_a_worker_dying_between_publishing_and_acking_hands_its_steps_back_unrun(
    amqp_url: str, amqp_prefix: str, tmp_path: Path, store: SqliteStore
) -> None:
    gate, runs = Gate(), Counter[str]()
    compiled = fan_in(gate, runs).compile()
    coordinator_transport = await opened(AmqpTransport(amqp_url, prefix=amqp_prefix))
    dying_transport = await opened(DiesBeforeAcking(amqp_url, amqp_prefix))
    next_transport = await opened(AmqpTransport(amqp_url, prefix=amqp_prefix))
    objects = FileObjectStore(tmp_path / "objects")
    config = CoordinatorConfig(worker_timeout=1.0)  # what the dying one ran last comes back
    try:
        async with asyncio.timeout(WAIT), Coordinator(coordinator_transport, store, config) as c:
            dying = Worker(dying_transport, objects, compiled.steps, WorkerConfig(name="dying"))
            async with dying:
                await dying.serve("default")
                run = await c.submit(compiled.plan)
                await gate.all.wait()
                gate.opened.set()
                await dying_transport.died.wait()
                await dying.abort()  # as SIGKILL would
                await dying_transport.close()  # the broker takes its unacked deliveries back
            confirmed = dying.outbox.completions
            config_next = WorkerConfig(name="next", heartbeat_interval=0.2)
            async with Worker(next_transport, objects, compiled.steps, config_next) as heir:
                await heir.serve("default")
                assert await asyncio.shield(run.done) is RunStatus.SUCCEEDED
    finally:
        await next_transport.close()
        await dying_transport.close()
        await coordinator_transport.close()
    assert confirmed >= WIDTH  # the completions went out; their acks never did
    assert all(runs[f"part{i}"] == 1 for i in range(WIDTH))  # none ran twice
    assert await succeeded_once(store, run.run_id)
