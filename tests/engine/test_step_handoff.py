"""Step messages go from a coordinator to a worker of the same process as objects
(:meth:`MemoryTransport.hand_many`): never encoded nor decoded on the way, and queued,
delivered, bounded, given back and dead-lettered as the bodies a broker would carry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from aexec import messages, pipeline, step
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.events import EventKind
from aexec.objects.memory import MemoryObjectStore
from aexec.store.memory import MemoryStore
from aexec.testing import wait_for_event
from aexec.transport import Delivery, HandsOver, handed
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus, StepStatus
from aexec.wire import step_queue
from aexec.worker import Worker, WorkerConfig


def _message(key: str, attempt: int = 1) -> messages.StepMessage:
    return messages.StepMessage("r1", key, attempt, "s", b"\x92\x90\x80", [], None, "replies")


@pytest.fixture
async def transport() -> AsyncIterator[MemoryTransport]:
    t = MemoryTransport()
    await t.open()
    await t.declare_queue("q")
    yield t
    await t.close()


class _Taken:
    """A handler that keeps every delivery, unsettled, and can wait for a count of them."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._changed = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self._changed.set()

    async def count(self, n: int) -> list[Delivery]:
        async with asyncio.timeout(5):
            while len(self.deliveries) < n:
                self._changed.clear()
                await self._changed.wait()
        return self.deliveries

    @property
    def keys(self) -> list[str]:
        return [_key(d) for d in self.deliveries]


def _key(delivery: Delivery) -> str:
    message = handed(delivery)
    assert isinstance(message, messages.StepMessage)
    return message.step_key


async def test_the_memory_transport_takes_messages_as_objects() -> None:
    assert isinstance(MemoryTransport(), HandsOver)


async def test_handed_messages_arrive_as_the_same_objects_highest_priority_first(
    transport: MemoryTransport,
) -> None:
    sent = {key: _message(key) for key in "abcd"}
    await transport.hand_many(
        [("q", sent[k], p) for k, p in zip("abcd", [1, 5, 0, 5], strict=True)]
    )
    taken = _Taken()
    await transport.consume("q", taken, prefetch=10)
    deliveries = await taken.count(4)
    assert taken.keys == ["b", "d", "a", "c"]
    assert all(handed(d) is sent[_key(d)] for d in deliveries)
    assert not any(d.redelivered for d in deliveries)
    # Its body, read, is the message encoded (a broker would have carried that).
    assert messages.decode(bytes(deliveries[0].body)) == sent["b"]


async def test_a_consumer_holds_at_most_its_prefetch_of_handed_messages(
    transport: MemoryTransport,
) -> None:
    taken = _Taken()
    await transport.consume("q", taken, prefetch=2)
    await transport.hand_many([("q", _message(k), 0) for k in "abcde"])
    await taken.count(2)
    await asyncio.sleep(0.01)
    assert taken.keys == ["a", "b"]
    assert await transport.queue_depths(["q"]) == {"q": 3}
    await taken.deliveries[0].ack()
    await taken.count(3)
    await asyncio.sleep(0.01)
    assert taken.keys == ["a", "b", "c"]


async def test_a_cancelled_consumer_gives_its_handed_messages_back_marked_redelivered(
    transport: MemoryTransport,
) -> None:
    first = _Taken()
    subscription = await transport.consume("q", first, prefetch=5)
    sent = [_message(k) for k in "ab"]
    await transport.hand_many([("q", m, 0) for m in sent])
    await first.count(2)
    await first.deliveries[0].ack()
    await subscription.cancel()
    second = _Taken()
    await transport.consume("q", second, prefetch=5)
    (again,) = await second.count(1)
    assert handed(again) is sent[1] and again.redelivered


async def test_a_stopped_consumer_hands_back_what_its_handler_had_not_taken_unmarked(
    transport: MemoryTransport,
) -> None:
    release, busy = asyncio.Event(), asyncio.Event()
    taken: list[Delivery] = []

    async def slow(delivery: Delivery) -> None:
        taken.append(delivery)
        busy.set()
        await release.wait()  # the others wait behind it, delivered but not handed

    subscription = await transport.consume("q", slow, prefetch=3)
    await transport.hand_many([("q", _message(k), 0) for k in "abc"])
    await asyncio.wait_for(busy.wait(), 5)
    await subscription.stop()
    release.set()
    later = _Taken()
    await transport.consume("q", later, prefetch=5)
    await later.count(2)
    assert sorted(later.keys) == ["b", "c"]
    assert not any(d.redelivered for d in later.deliveries)
    assert [_key(d) for d in taken] == ["a"]


async def test_a_handed_message_rejected_is_dead_lettered_encoded_with_why(
    transport: MemoryTransport,
) -> None:
    taken = _Taken()
    await transport.consume("q", taken, prefetch=5)
    sent = _message("a")
    await transport.hand_many([("q", sent, 3)])
    (delivery,) = await taken.count(1)
    await delivery.reject(reason="no such step")
    (letter,) = await transport.dead_letters()
    assert (letter.queue, letter.reason, letter.priority) == ("q", "no such step", 3)
    assert messages.decode(letter.body) == sent
    (replayed,) = await transport.replay_dead_letters()
    assert replayed.error is None
    _, back = await taken.count(2)
    assert handed(back) is None and messages.decode(back.body) == sent


class _Recording(MemoryTransport):
    """The memory broker, noting what the step queues were given: objects or bodies."""

    def __init__(self) -> None:
        super().__init__()
        self.step_payloads: list[Any] = []

    async def publish_many(self, batch: Sequence[tuple[str, Any, int]]) -> None:
        self.step_payloads += [body for queue, body, _ in batch if queue.startswith("step.")]
        await super().publish_many(batch)


@step
async def double(x: int) -> int:
    return 2 * x


@step
async def add(values: list[int]) -> int:
    return sum(values)


@pipeline
def fan(n: int = 5) -> object:
    return add([double.alias(f"d{i}")(i) for i in range(n)])


async def test_a_coordinator_hands_its_step_messages_to_a_worker_in_the_process_unencoded(
    store: MemoryStore,
) -> None:
    transport = _Recording()
    await transport.open()
    compiled = fan.compile(n=5)
    objects = MemoryObjectStore()
    async with (
        Coordinator(transport, store) as coordinator,
        Worker(transport, objects, compiled.steps, WorkerConfig(name="w")) as worker,
    ):
        await worker.serve("default")
        run = await coordinator.submit(compiled.plan)
        assert await asyncio.wait_for(run.done, 10) is RunStatus.SUCCEEDED
    await transport.close()
    assert len(transport.step_payloads) == 6
    assert all(type(p) is messages.StepMessage for p in transport.step_payloads)
    record = await store.get_run(run.run_id)
    assert record is not None and record.status is RunStatus.SUCCEEDED


async def test_a_step_message_that_might_not_fit_goes_encoded_with_its_inputs_stored(
    store: MemoryStore,
) -> None:
    @step
    async def big(i: int) -> bytes:
        return bytes([i]) * 3000

    @step
    async def sizes(values: list[bytes]) -> int:
        return sum(len(v) for v in values)

    @pipeline
    def p() -> object:
        return sizes([big.alias(f"b{i}")(i) for i in range(4)])

    transport = _Recording()
    await transport.open()
    compiled = p.compile()
    objects = MemoryObjectStore()
    config = CoordinatorConfig(max_message_size=8000)
    async with (
        Coordinator(transport, store, config, objects=objects) as coordinator,
        Worker(transport, objects, compiled.steps, WorkerConfig(name="w")) as worker,
    ):
        await worker.serve("default")
        run = await coordinator.submit(compiled.plan)
        assert await asyncio.wait_for(run.done, 10) is RunStatus.SUCCEEDED
    await transport.close()
    *parts, fan_in = transport.step_payloads
    assert all(type(p) is messages.StepMessage for p in parts)
    assert isinstance(fan_in, bytes) and len(fan_in) <= 8000  # inputs moved to the objects
    assert any(key.startswith(f"outputs/{run.run_id}/") for key in objects._objects)


async def test_a_worker_killed_before_acking_a_handed_step_leaves_it_to_another_worker(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    calls: list[str] = []
    never, running = asyncio.Event(), asyncio.Event()

    @step
    async def long() -> str:
        calls.append("x")
        running.set()
        if len(calls) == 1:
            await never.wait()  # the first worker dies while running this
        return "done"

    @pipeline
    def p() -> object:
        return long()

    compiled = p.compile()
    objects = MemoryObjectStore()
    slow_ack = dict(heartbeat_interval=30.0, ack_after=30.0)  # the delivery stays unacked
    async with Coordinator(transport, store) as coordinator:
        doomed = Worker(transport, objects, compiled.steps, WorkerConfig(name="doomed", **slow_ack))
        async with doomed:
            await doomed.serve("default")
            run = await coordinator.submit(compiled.plan)
            await asyncio.wait_for(running.wait(), 5)
            await doomed.abort()  # as a crash: the unacked step goes back, redelivered
            survivor = Worker(transport, objects, compiled.steps, WorkerConfig(name="survivor"))
            async with survivor:
                await survivor.serve("default")
                status = await asyncio.wait_for(run.done, 10)
            never.set()
    assert status is RunStatus.SUCCEEDED
    assert calls == ["x", "x"]  # the redelivered attempt is reported lost, not run again
    (record,) = await store.get_steps(run.run_id)
    assert record.status is StepStatus.SUCCEEDED and record.attempts == 2
    events = await store.get_events(run.run_id)
    (lost,) = [e for e in events if e.kind is EventKind.STEP_RETRYING]
    assert lost.data["error"]["type"] == "WorkerLostError"


async def test_steps_handed_to_a_worker_of_a_run_cancelled_meanwhile_never_start(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    started: list[int] = []
    gate, two = asyncio.Event(), asyncio.Event()

    @step
    async def work(i: int) -> int:
        started.append(i)
        if len(started) == 2:
            two.set()
        await gate.wait()
        return i

    @pipeline
    def p() -> object:
        return [work.alias(f"w{i}")(i) for i in range(6)]

    compiled = p.compile()
    objects = MemoryObjectStore()
    async with (
        Coordinator(transport, store) as coordinator,
        Worker(transport, objects, compiled.steps, WorkerConfig(name="w", concurrency=2)) as worker,
    ):
        await worker.serve("default")
        run = await coordinator.submit(compiled.plan)
        await asyncio.wait_for(two.wait(), 5)
        assert await transport.queue_depths([step_queue("default")]) == {step_queue("default"): 4}
        await coordinator.cancel(run.run_id)
        await wait_for_event(coordinator.events(run.run_id), EventKind.RUN_CANCELLED)
        gate.set()
        await asyncio.sleep(0.1)
        assert worker.in_flight == 0
    assert len(started) == 2  # the four waiting were skipped, the two running cancelled
    assert await transport.queue_depths([step_queue("default")]) == {step_queue("default"): 0}
