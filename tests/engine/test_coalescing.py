"""Completions coalesced on the worker (issue 15): fewer messages than steps, and every
guarantee of one completion per message kept — each recorded once, a step message acked
only once its completion is confirmed, a worker that dies between the two leaving its
steps to the broker, duplicates ignored, size limits kept, and a lone completion never
held back by a publish in flight."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Coroutine, Sequence
from typing import Any

import pytest

import aexec
from aexec import messages, pipeline, step
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.events import EventKind
from aexec.objects.memory import MemoryObjectStore
from aexec.outbox import Outbox
from aexec.parts import split
from aexec.store.memory import MemoryStore
from aexec.transport import Delivery
from aexec.transport.memory import MemoryDelivery, MemoryTransport
from aexec.types import RunStatus
from aexec.worker import Worker, WorkerConfig

WAIT = 10.0  # bound on every wait for something that should happen
QUIET = 0.3  # how long to watch for something that should not happen
QUICK = {"heartbeat_interval": 0.05}
WIDTH = 20


class Recording(MemoryTransport):
    """The memory broker, keeping every body published to a reply queue."""

    def __init__(self) -> None:
        super().__init__()
        self.replies: list[bytes] = []

    async def publish(self, queue: str, body: bytes, *, priority: int = 0) -> None:
        await super().publish(queue, body, priority=priority)
        if queue.startswith("reply"):
            self.replies.append(body)

    def completions_per_message(self) -> list[int]:
        sizes = []
        for body in self.replies:
            match messages.decode(body):
                case messages.Completions(items=items):
                    sizes.append(len(items))
                case messages.Completion():
                    sizes.append(1)
        return sizes


class Gate:
    """Holds the steps of :func:`fan_in` until :meth:`open`, so that they finish together;
    :meth:`all_waiting` returns once ``WIDTH`` wait there."""

    def __init__(self) -> None:
        self.waiting = 0
        self._all, self._open = asyncio.Event(), asyncio.Event()

    async def __call__(self) -> None:
        self.waiting += 1
        if self.waiting == WIDTH:
            self._all.set()
        await self._open.wait()

    async def all_waiting(self) -> None:
        await asyncio.wait_for(self._all.wait(), WAIT)

    def open(self) -> None:
        self._open.set()


def fan_in(gate: Gate, runs: Counter[str]) -> aexec.Pipeline:
    """``WIDTH`` steps held at ``gate``, then one that sums them."""

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


async def succeeded_per_step(store: MemoryStore, run_id: str) -> Counter[str]:
    events = await store.get_events(run_id)
    return Counter(e.step or "" for e in events if e.kind is EventKind.STEP_SUCCEEDED)


async def run_fan_in(
    transport: MemoryTransport, store: MemoryStore, config: WorkerConfig
) -> tuple[RunStatus, Counter[str], Counter[str], Worker]:
    gate, runs = Gate(), Counter[str]()
    compiled = fan_in(gate, runs).compile()
    async with (
        Coordinator(transport, store) as coordinator,
        Worker(transport, MemoryObjectStore(), compiled.steps, config) as worker,
    ):
        await worker.serve("default")
        run = await coordinator.submit(compiled.plan)
        await gate.all_waiting()
        gate.open()
        status = await asyncio.wait_for(asyncio.shield(run.done), WAIT)
    return status, runs, await succeeded_per_step(store, run.run_id), worker


async def test_steps_that_finish_together_send_their_completions_in_one_message(
    store: MemoryStore,
) -> None:
    transport = Recording()
    await transport.open()
    status, runs, succeeded, worker = await run_fan_in(transport, store, WorkerConfig(**QUICK))
    assert status is RunStatus.SUCCEEDED
    assert set(runs.values()) == {1} and set(succeeded.values()) == {1}
    per_message = transport.completions_per_message()
    assert sum(per_message) == WIDTH + 1  # every completion went, once
    assert max(per_message) == WIDTH  # the twenty released together went together
    assert (worker.outbox.messages, worker.outbox.completions) == (len(per_message), WIDTH + 1)
    await transport.close()


async def test_a_worker_that_does_not_coalesce_sends_a_message_per_completion(
    store: MemoryStore,
) -> None:
    transport = Recording()
    await transport.open()
    status, _, _, worker = await run_fan_in(transport, store, WorkerConfig(coalesce=0, **QUICK))
    assert status is RunStatus.SUCCEEDED
    assert transport.completions_per_message() == [1] * (WIDTH + 1)
    assert worker.outbox.messages == WIDTH + 1
    await transport.close()


class Doubling(Recording):
    """A broker that delivers every coalesced completions message twice."""

    async def publish(self, queue: str, body: bytes, *, priority: int = 0) -> None:
        await super().publish(queue, body, priority=priority)
        if queue.startswith("reply") and isinstance(messages.decode(body), messages.Completions):
            await super().publish(queue, body, priority=priority)


async def test_a_coalesced_message_delivered_twice_records_each_completion_once(
    store: MemoryStore,
) -> None:
    transport = Doubling()
    await transport.open()
    status, runs, succeeded, _ = await run_fan_in(transport, store, WorkerConfig(**QUICK))
    assert status is RunStatus.SUCCEEDED
    assert max(transport.completions_per_message()) > 1  # coalesced, so doubled
    assert set(runs.values()) == {1}  # the dependent ran once
    assert set(succeeded.values()) == {1} and len(succeeded) == WIDTH + 1
    await transport.close()


class DiesBeforeAcking(MemoryTransport):
    """The broker of a worker that dies right after its completions were confirmed and
    before it could ack their step messages: those acks never happen, ``died`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.died = asyncio.Event()
        self.dead = False

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        step = isinstance(messages.decode(deliveries[0].body), messages.StepMessage)
        if not step or self.dead:  # the coordinator's acks, or the next worker's
            await super().ack_many(deliveries)
            return
        self.died.set()
        await asyncio.Event().wait()


async def test_a_worker_dying_between_publishing_and_acking_leaves_its_steps_to_the_broker(
    store: MemoryStore,
) -> None:
    gate, runs = Gate(), Counter[str]()
    compiled = fan_in(gate, runs).compile()
    transport = DiesBeforeAcking()
    await transport.open()
    objects = MemoryObjectStore()
    # Its heartbeats named what it ran last (the sum): their silence gives that back.
    config = CoordinatorConfig(worker_timeout=0.5)
    async with Coordinator(transport, store, config) as coordinator:
        dying = Worker(transport, objects, compiled.steps, WorkerConfig(name="dying", **QUICK))
        async with dying:
            await dying.serve("default")
            run = await coordinator.submit(compiled.plan)
            await gate.all_waiting()
            gate.open()
            await asyncio.wait_for(transport.died.wait(), WAIT)
            await dying.abort()  # as a SIGKILL would: its step messages go back, unacked
            transport.dead = True
        assert dying.outbox.completions == WIDTH  # confirmed, all of them, never acked
        # The next worker gets them back marked redelivered and reports them lost rather
        # than running them again: their completions were recorded already.
        other = Worker(transport, objects, compiled.steps, WorkerConfig(coalesce=0, **QUICK))
        async with other:
            await other.serve("default")
            assert await asyncio.wait_for(asyncio.shield(run.done), WAIT) is RunStatus.SUCCEEDED
    assert all(runs[f"part{i}"] == 1 for i in range(WIDTH))  # none ran twice
    succeeded = await succeeded_per_step(store, run.run_id)
    assert set(succeeded.values()) == {1} and len(succeeded) == WIDTH + 1
    await transport.close()


# -- the outbox alone --------------------------------------------------------------------------


class Consumed:
    """A queue's consumer: what it received, acked unless it should ``hold`` it."""

    def __init__(self, *, hold: bool = False) -> None:
        self.deliveries: list[Delivery] = []
        self._hold = hold
        self._changed = asyncio.Condition()

    @property
    def messages(self) -> list[messages.Message]:
        return [messages.decode(d.body) for d in self.deliveries]

    async def __call__(self, delivery: Delivery) -> None:
        async with self._changed:
            self.deliveries.append(delivery)
            self._changed.notify_all()
        if not self._hold:
            await delivery.ack()

    async def wait_for(self, count: int) -> list[Delivery]:
        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(lambda: len(self.deliveries) >= count)
        return self.deliveries[:count]


def completion(i: int, output: bytes = b"\xc0") -> messages.Completion:
    return messages.Completion("r", f"s{i}", 1, output, None, "w", 0.0, 1.0)


async def held_deliveries(transport: MemoryTransport, count: int) -> Consumed:
    """A consumer holding ``count`` step deliveries unacked."""
    await transport.declare_queue("steps")
    held = Consumed(hold=True)
    await transport.consume("steps", held, prefetch=count)
    for i in range(count):
        await transport.publish("steps", str(i).encode())
    await held.wait_for(count)
    return held


def unacked(delivery: Delivery) -> bool:
    assert isinstance(delivery, MemoryDelivery)
    return delivery.consumer is not None


async def start_outbox(transport: MemoryTransport, **options: float) -> tuple[Outbox, Consumed]:
    await transport.declare_queue("reply")
    consumed = Consumed()
    await transport.consume("reply", consumed, prefetch=100)

    tasks: set[asyncio.Task[None]] = set()

    def start(coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return Outbox(transport, start, name="w", **options), consumed


async def test_completions_beyond_the_size_limit_go_in_several_messages() -> None:
    transport = MemoryTransport()
    await transport.open()
    outbox, consumed = await start_outbox(transport, max_bytes=350)
    held = (await held_deliveries(transport, 5)).deliveries
    await asyncio.gather(
        *(outbox.send("reply", completion(i, b"x" * 100), held[i]) for i in range(5))
    )
    await consumed.wait_for(3)
    sizes = [len(m.items) if isinstance(m, messages.Completions) else 1 for m in consumed.messages]
    assert sizes == [2, 2, 1]
    assert not any(unacked(d) for d in held)
    await transport.close()


class Stalled(MemoryTransport):
    """A broker whose first publish to ``reply`` waits for ``confirm`` (a confirm that is
    slow to come back); ``published`` is set once it holds it."""

    def __init__(self) -> None:
        super().__init__()
        self.confirm, self.stalled = asyncio.Event(), asyncio.Event()

    async def publish(self, queue: str, body: bytes, *, priority: int = 0) -> None:
        first = queue == "reply" and not self.stalled.is_set()
        if first:
            self.stalled.set()
            await self.confirm.wait()
        await super().publish(queue, body, priority=priority)


async def test_a_step_message_is_acked_only_once_its_completion_is_confirmed() -> None:
    transport = Stalled()
    await transport.open()
    outbox, consumed = await start_outbox(transport)
    [delivery] = (await held_deliveries(transport, 1)).deliveries
    sending = asyncio.ensure_future(outbox.send("reply", completion(0), delivery))
    await asyncio.wait_for(transport.stalled.wait(), WAIT)
    await asyncio.sleep(QUIET)
    assert unacked(delivery) and not sending.done()
    transport.confirm.set()
    await asyncio.wait_for(sending, WAIT)
    assert not unacked(delivery)
    assert consumed.messages == [completion(0)]
    await transport.close()


async def test_a_completion_does_not_wait_long_for_a_publish_in_flight() -> None:
    transport = Stalled()
    await transport.open()
    outbox, consumed = await start_outbox(transport, window=0.01)
    first = asyncio.ensure_future(outbox.send("reply", completion(0), None))
    await asyncio.wait_for(transport.stalled.wait(), WAIT)
    # The first publish waits for its confirm; the next completion goes on its own after
    # the window rather than behind it.
    await asyncio.wait_for(outbox.send("reply", completion(1), None), WAIT)
    assert consumed.messages == [completion(1)]
    assert not first.done()
    transport.confirm.set()
    await asyncio.wait_for(first, WAIT)
    await transport.close()


# -- a coalesced delivery, settled part by part -----------------------------------------------


@pytest.mark.parametrize(
    ("settle", "outcome"),
    [
        (["ack", "ack", "ack"], "acked"),
        (["ack", "requeue", "reject"], "requeued"),
        (["reject", "ack", "ack"], "dead-lettered"),
    ],
)
async def test_a_coalesced_delivery_is_settled_once_every_completion_in_it_is(
    settle: list[str], outcome: str
) -> None:
    transport = MemoryTransport()
    await transport.open()
    held = await held_deliveries(transport, 1)
    delivery = held.deliveries[0]
    parts = split(delivery, messages.Completions([completion(i) for i in range(3)]))
    assert [messages.decode(p.body) for p in parts] == [completion(i) for i in range(3)]
    for part, how in zip(parts, settle, strict=True):
        assert unacked(delivery)  # until the last part is settled
        if how == "ack":
            await part.ack()
        else:
            await part.reject(requeue=how == "requeue", reason="reply for unknown run 'r'")
        await part.ack()  # settling a part twice changes nothing
    assert not unacked(delivery)
    if outcome == "requeued":  # back to its consumer, whole
        again = (await held.wait_for(2))[1]
        assert again.body == delivery.body and again.redelivered
    else:
        await asyncio.sleep(QUIET)
        assert len(held.deliveries) == 1
    letters = await transport.dead_letters()
    assert [letter.reason for letter in letters] == (
        ["reply for unknown run 'r'"] if outcome == "dead-lettered" else []
    )
    await transport.close()


class Broken(MemoryTransport):
    """A broker whose publishes to ``reply`` fail with a bug (not a transport error)."""

    async def publish(self, queue: str, body: bytes, *, priority: int = 0) -> None:
        if queue == "reply":
            raise TypeError("a bug in the publish path")
        await super().publish(queue, body, priority=priority)


async def test_a_bug_in_the_publish_path_reaches_every_sender_instead_of_hanging_them() -> None:
    transport = Broken()
    await transport.open()
    outbox, _ = await start_outbox(transport)
    held = (await held_deliveries(transport, 3)).deliveries
    sends = [asyncio.ensure_future(outbox.send("reply", completion(i), held[i])) for i in range(3)]
    results = await asyncio.wait_for(asyncio.gather(*sends, return_exceptions=True), WAIT)
    assert [type(r) for r in results] == [TypeError] * 3
    assert all(unacked(d) for d in held)  # nothing published: the broker keeps the steps
    await transport.close()
