"""Signed messages (``AEXEC_SECRET``) on the in-memory transport: coordinators and workers that
share a secret run pipelines; unsigned, tampered and wrongly keyed messages are dead-lettered
with the reason and never run; a worker with another secret runs nothing.

Messages are forged by publishing on the transport under the signing layer, as someone
with access to the broker but not the secret would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

import aexec.testing
from aexec import messages, pipeline, step
from aexec.coordinator import Coordinator
from aexec.dsl import CompiledPipeline
from aexec.errors import PublishError
from aexec.events import EventKind
from aexec.objects.memory import MemoryObjectStore
from aexec.store.memory import MemoryStore
from aexec.transport import DeadLetter, Delivery
from aexec.transport.memory import MemoryTransport
from aexec.transport.signed import BAD_SIGNATURE, UNSIGNED, SignedTransport, derive_key, sign
from aexec.types import RunStatus
from aexec.wire import CONTROL_TOPIC, RUNS_ENDED_TOPIC, step_queue
from aexec.worker import Worker, WorkerConfig

SECRET = "s3cret-for-tests"
WAIT = 5.0


@pytest.fixture
async def broker() -> AsyncIterator[MemoryTransport]:
    """The broker itself: what is published here directly is not signed."""
    transport = MemoryTransport()
    await transport.open()
    yield transport
    await transport.close()


def touching(calls: list[str]) -> CompiledPipeline:
    @step
    async def touch(tag: str) -> str:
        calls.append(tag)
        return tag

    @pipeline
    def p(tag: str) -> object:
        return touch(tag)

    return p.compile(tag="legit")


async def dead_letters(
    broker: MemoryTransport, until: Callable[[list[DeadLetter]], bool]
) -> list[DeadLetter]:
    async with asyncio.timeout(WAIT):
        while True:
            letters = await broker.dead_letters()
            if until(letters):
                return letters
            await asyncio.sleep(0.01)


async def test_an_executor_with_a_secret_runs_a_fan_in() -> None:
    @step
    async def add(a: int, b: int) -> int:
        return a + b

    @step
    async def total(values: list[int]) -> int:
        return sum(values)

    @pipeline
    def fan_in() -> object:
        return total([add.alias(f"a{i}")(i, i) for i in range(10)])

    async with aexec.testing.executor(secret=SECRET) as ex:
        run = await ex.submit(fan_in)
        assert await run.result() == 90


async def test_peers_sharing_a_secret_sign_every_message_they_exchange(
    broker: MemoryTransport, store: MemoryStore
) -> None:
    calls: list[str] = []
    compiled = touching(calls)
    seen: list[bytes] = []
    publish = broker.publish

    async def spy(queue: str, body: bytes, *, priority: int = 0) -> None:
        seen.append(body)
        await publish(queue, body, priority=priority)

    broker.publish = spy  # type: ignore[method-assign]
    signed = SignedTransport(broker, SECRET)
    async with (
        Coordinator(signed, store) as coordinator,
        Worker(signed, MemoryObjectStore(), compiled.steps) as worker,
    ):
        await worker.serve("default")
        run = await coordinator.submit(compiled.plan)
        assert await asyncio.wait_for(run.done, WAIT) is RunStatus.SUCCEEDED
    assert calls == ["legit"]
    assert seen and all(body.startswith(b"\xc1S1") for body in seen)
    assert await broker.dead_letters() == []


async def test_unsigned_tampered_and_wrongly_keyed_step_messages_are_dead_lettered_unrun(
    broker: MemoryTransport, store: MemoryStore
) -> None:
    calls: list[str] = []
    compiled = touching(calls)
    signed = SignedTransport(broker, SECRET)
    async with (
        Coordinator(signed, store) as coordinator,
        Worker(signed, MemoryObjectStore(), compiled.steps) as worker,
    ):
        await worker.serve("default")
        queue = step_queue("default")

        def forged(tag: str) -> bytes:
            call = compiled.plan.steps[0].call.replace(b"legit", tag.encode())
            msg = messages.StepMessage(
                "forged-run", "touch", 1, "touch", call, [], None, coordinator.reply_queue
            )
            return msg.encode()

        tampered = bytearray(sign(derive_key(SECRET), f"q:{queue}", forged("tampered")))
        tampered[-1] ^= 0x01
        await broker.publish(queue, forged("unsigned"))
        await broker.publish(queue, bytes(tampered))
        await broker.publish(queue, sign(derive_key("wrong"), f"q:{queue}", forged("wrong")))
        run = await coordinator.submit(compiled.plan)
        assert await asyncio.wait_for(run.done, WAIT) is RunStatus.SUCCEEDED
    assert calls == ["legit"]
    letters = await broker.dead_letters()
    assert [(d.queue, d.reason) for d in letters] == [
        (queue, UNSIGNED),
        (queue, BAD_SIGNATURE),
        (queue, BAD_SIGNATURE),
    ]


async def test_a_forged_completion_is_dead_lettered_and_does_not_finish_the_step(
    broker: MemoryTransport, store: MemoryStore
) -> None:
    release, started = asyncio.Event(), asyncio.Event()

    @step
    async def slow() -> str:
        started.set()
        await release.wait()
        return "real"

    @pipeline
    def p() -> object:
        return slow()

    compiled = p.compile()
    signed = SignedTransport(broker, SECRET)
    async with (
        Coordinator(signed, store) as coordinator,
        Worker(signed, MemoryObjectStore(), compiled.steps) as worker,
    ):
        signed.on_reject(lambda r: coordinator.message_rejected(r.body, r.reason, r.destination))
        await worker.serve("default")
        run = await coordinator.submit(compiled.plan)
        try:
            await asyncio.wait_for(started.wait(), WAIT)
            forged = messages.Completion(run.run_id, "slow", 1, b"\xa6forged", None, "evil", 0, 0)
            await broker.publish(coordinator.reply_queue, forged.encode())
            [letter] = await dead_letters(broker, bool)
            assert (letter.queue, letter.reason) == (coordinator.reply_queue, UNSIGNED)
            assert run.state.run_status is RunStatus.RUNNING
        finally:
            release.set()  # the worker drains on the way out: never leave the step waiting
        assert await asyncio.wait_for(run.done, WAIT) is RunStatus.SUCCEEDED
    (record,) = await store.get_steps(run.run_id)
    assert record.output == b"\xa4real"
    [rejected] = [
        e for e in await store.get_events(run.run_id) if e.kind is EventKind.MESSAGE_REJECTED
    ]
    assert (rejected.step, rejected.attempt) == ("slow", 1)
    assert rejected.data == {
        "reason": UNSIGNED,
        "message": "done",
        "destination": f"queue {coordinator.reply_queue}",
    }


async def test_forged_coalesced_completions_are_dead_lettered_and_recorded_on_each_step_they_name(
    broker: MemoryTransport, store: MemoryStore
) -> None:
    release, started = asyncio.Event(), asyncio.Event()

    @step
    async def slow(i: int) -> int:
        if i == 1:
            started.set()
        await release.wait()
        return i

    @pipeline
    def p() -> object:
        return [slow.alias(f"s{i}")(i) for i in range(2)]

    compiled = p.compile()
    signed = SignedTransport(broker, SECRET)
    async with (
        Coordinator(signed, store) as coordinator,
        Worker(signed, MemoryObjectStore(), compiled.steps) as worker,
    ):
        signed.on_reject(lambda r: coordinator.message_rejected(r.body, r.reason, r.destination))
        await worker.serve("default")
        run = await coordinator.submit(compiled.plan)
        try:
            await asyncio.wait_for(started.wait(), WAIT)
            forged = messages.Completions(
                [
                    messages.Completion(run.run_id, f"s{i}", 1, b"\xa6forged", None, "evil", 0, 0)
                    for i in range(2)
                ]
            )
            await broker.publish(coordinator.reply_queue, forged.encode())
            [letter] = await dead_letters(broker, bool)
            assert (letter.queue, letter.reason) == (coordinator.reply_queue, UNSIGNED)
            assert run.state.run_status is RunStatus.RUNNING
        finally:
            release.set()
        assert await asyncio.wait_for(run.done, WAIT) is RunStatus.SUCCEEDED
    assert [r.output for r in await store.get_steps(run.run_id)] == [b"\x00", b"\x01"]
    rejected = [
        e for e in await store.get_events(run.run_id) if e.kind is EventKind.MESSAGE_REJECTED
    ]
    assert sorted((e.step, e.attempt, e.data["message"]) for e in rejected) == [
        ("s0", 1, "dones"),
        ("s1", 1, "dones"),
    ]


async def test_a_forged_message_for_a_run_nobody_here_drives_leaves_no_event(
    broker: MemoryTransport, store: MemoryStore
) -> None:
    calls: list[str] = []
    compiled = touching(calls)
    signed = SignedTransport(broker, SECRET)
    async with (
        Coordinator(signed, store) as coordinator,
        Worker(signed, MemoryObjectStore(), compiled.steps) as worker,
    ):
        signed.on_reject(lambda r: coordinator.message_rejected(r.body, r.reason, r.destination))
        await worker.serve("default")
        run = await coordinator.submit(compiled.plan)
        assert await asyncio.wait_for(run.done, WAIT) is RunStatus.SUCCEEDED
        stray = messages.Completion("elsewhere", "touch", 1, b"\xc0", None, "evil", 0, 0)
        await broker.publish(coordinator.reply_queue, stray.encode())
        await broker.publish(coordinator.reply_queue, b"\x00 not even msgpack")
        assert len(await dead_letters(broker, lambda letters: len(letters) == 2)) == 2
    kinds = [e.kind for e in await store.get_events(run.run_id)]
    assert EventKind.MESSAGE_REJECTED not in kinds


async def test_a_worker_with_another_secret_runs_nothing_until_its_dead_letters_are_replayed(
    broker: MemoryTransport, store: MemoryStore
) -> None:
    calls: list[str] = []
    compiled = touching(calls)
    signed = SignedTransport(broker, SECRET)
    objects = MemoryObjectStore()
    async with Coordinator(signed, store) as coordinator:
        misconfigured = SignedTransport(broker, "another secret")
        async with Worker(misconfigured, objects, compiled.steps) as wrong:
            await wrong.serve("default")
            run = await coordinator.submit(compiled.plan)
            [letter] = await dead_letters(broker, bool)
        assert (letter.reason, calls, run.done.done()) == (BAD_SIGNATURE, [], False)
        async with Worker(signed, objects, compiled.steps) as right:
            await right.serve("default")
            [replay] = await signed.replay_dead_letters()
            assert replay.error is None
            assert await asyncio.wait_for(run.done, WAIT) is RunStatus.SUCCEEDED
    assert calls == ["legit"]


async def test_an_unsigned_broadcast_is_dropped_and_a_signed_one_obeyed(
    broker: MemoryTransport,
) -> None:
    signed = SignedTransport(broker, SECRET)
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    async def answered(delivery: Delivery) -> None:
        await delivery.ack()
        answers.put_nowait(delivery.body)

    await signed.declare_queue("answers", max_priority=0)
    await signed.consume("answers", answered, prefetch=10)
    async with Worker(signed, MemoryObjectStore(), {}, WorkerConfig(name="w")) as worker:
        await worker.listen_for_control()
        await broker.broadcast(CONTROL_TOPIC, messages.Control("terminate").encode())
        await signed.broadcast(CONTROL_TOPIC, messages.Control("ping", None, "answers").encode())
        # Broadcasts reach a subscriber in order: once the ping is answered, the unsigned
        # terminate before it has been handled.
        info = messages.decode(await asyncio.wait_for(answers.get(), WAIT))
        assert isinstance(info, messages.WorkerInfo) and info.name == "w"
        assert not worker.terminated.is_set()
        await signed.broadcast(CONTROL_TOPIC, messages.Control("terminate", "w").encode())
        await asyncio.wait_for(worker.terminated.wait(), WAIT)
    assert await broker.dead_letters() == []  # broadcasts are never dead-lettered


async def test_an_unsigned_run_ended_announcement_is_dropped_and_a_signed_one_obeyed(
    broker: MemoryTransport,
) -> None:
    """The retained runs-ended log is signed too: a forged "run ended" cannot make workers
    skip a live run's steps."""
    signed = SignedTransport(broker, SECRET)
    rejected: list[str] = []
    signed.on_reject(lambda rejection: rejected.append(rejection.reason))
    calls: list[str] = []
    compiled = touching(calls)
    await broker.announce(
        RUNS_ENDED_TOPIC, messages.RunEnded("forged", "cancelled", time.time()).encode()
    )
    await signed.announce(
        RUNS_ENDED_TOPIC, messages.RunEnded("ended", "succeeded", time.time()).encode()
    )
    async with Worker(signed, MemoryObjectStore(), compiled.steps, WorkerConfig(name="w")) as w:
        assert rejected == [UNSIGNED]  # both were handled before the worker serves anything
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        async def replied(delivery: Delivery) -> None:
            await delivery.ack()
            replies.put_nowait(delivery.body)

        await signed.declare_queue("replies", max_priority=0)
        await signed.consume("replies", replied, prefetch=10)
        await w.serve("default")
        for run_id in ("ended", "forged"):  # in order: "ended" is handled first
            step = messages.StepMessage(
                run_id, "touch", 1, "touch", compiled.plan.steps[0].call, [], None, "replies"
            )
            await signed.publish(step_queue("default"), step.encode())
        done = messages.decode(await asyncio.wait_for(replies.get(), WAIT))
        assert isinstance(done, messages.Completion) and done.run_id == "forged"
        assert calls == ["legit"]  # the forged announcement skipped nothing; "ended" ran not


class _HalfConfirmed(MemoryTransport):
    """A broker that confirms every other message of a batch (the rest are unsent)."""

    async def publish_many(self, messages: Sequence[tuple[str, bytes, int]]) -> None:
        await super().publish_many(messages[::2])
        raise PublishError("not confirmed", messages[1::2])


async def test_a_batch_partly_unconfirmed_names_the_callers_own_messages_unsent() -> None:
    inner = _HalfConfirmed()
    await inner.open()
    try:
        await inner.declare_queue("q")
        signed = SignedTransport(inner, SECRET)
        batch = [("q", b"a", 0), ("q", b"b", 1), ("q", b"c", 2), ("q", b"d", 3)]
        with pytest.raises(PublishError) as raised:
            await signed.publish_many(batch)
        assert raised.value.unsent == [batch[1], batch[3]]
        assert all(a is b for a, b in zip(raised.value.unsent, [batch[1], batch[3]], strict=True))
    finally:
        await inner.close()
