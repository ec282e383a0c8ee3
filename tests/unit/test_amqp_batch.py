"""A batch of publishes queued as one write: every message gets its own delivery tag and
confirmation, and a batch that never reached the writer leaves the channel as it was."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aiormq
import pamqp.frame
import pytest
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from aexec.transport.amqp_batch import batchable, outcomes, put_publishes


class FakeChannel:
    """What ``put_publishes`` uses of an aiormq channel, with a write queue to look at."""

    def __init__(self, *, queue_size: int = 0, delivery_tag: int = 7) -> None:
        self.is_closed = False
        self.number = 3
        self.lock = asyncio.Lock()
        self.delivery_tag = delivery_tag
        self.confirmations: dict[int, asyncio.Future[Any]] = {}
        self.message_id_delivery_tag: dict[str, int] = {}
        self.write_queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=queue_size)

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    def _split_body(self, body: bytes) -> list[Any]:
        return aiormq.Channel._split_body(cast(aiormq.Channel, SimpleBody()), body)


class SimpleBody:
    max_content_size = 4


def publishes(*bodies: bytes) -> list[tuple[str, bytes, Basic.Properties]]:
    return [
        (f"q{i}", body, Basic.Properties(delivery_mode=2, priority=i, message_id=f"m{i}"))
        for i, body in enumerate(bodies)
    ]


def frames(payload: bytes) -> list[Any]:
    found = []
    while payload:
        used, _, frame = pamqp.frame.unmarshal(payload)
        found.append(frame)
        payload = payload[used:]
    return found


async def test_a_batch_is_one_write_with_a_tag_and_a_confirmation_per_message() -> None:
    channel = FakeChannel()
    confirmations = await put_publishes(
        cast(aiormq.Channel, channel), publishes(b"first", b"", b"abc")
    )
    assert channel.delivery_tag == 10
    assert sorted(channel.confirmations) == [8, 9, 10]
    assert channel.message_id_delivery_tag == {"m0": 8, "m1": 9, "m2": 10}
    assert [channel.confirmations[tag] for tag in (8, 9, 10)] == confirmations
    assert channel.write_queue.qsize() == 1  # one write for the three
    written = frames(channel.write_queue.get_nowait().payload)
    kinds = [type(frame).__name__ for frame in written]
    # "first" is cut in bodies of at most 4 bytes, "" has none.
    assert kinds == [
        "Publish", "ContentHeader", "ContentBody", "ContentBody",
        "Publish", "ContentHeader",
        "Publish", "ContentHeader", "ContentBody",
    ]  # fmt: skip
    assert [f.routing_key for f in written if isinstance(f, Basic.Publish)] == ["q0", "q1", "q2"]
    assert all(f.mandatory for f in written if isinstance(f, Basic.Publish))
    headers = [f for f in written if isinstance(f, ContentHeader)]
    assert [(h.body_size, h.properties.priority) for h in headers] == [(5, 0), (0, 1), (3, 2)]
    confirmations[1].set_result(None)  # confirmed: its message id is forgotten
    await asyncio.sleep(0)
    assert "m1" not in channel.message_id_delivery_tag


async def test_a_batch_cancelled_before_it_reached_the_writer_leaves_no_trace() -> None:
    channel = FakeChannel(queue_size=1)
    channel.write_queue.put_nowait("a frame before it")  # full: the batch waits
    batch = publishes(b"a", b"b")
    task = asyncio.ensure_future(put_publishes(cast(aiormq.Channel, channel), batch))
    await asyncio.sleep(0.01)
    assert channel.delivery_tag == 9  # taken while it waits for room
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert channel.delivery_tag == 7
    assert channel.confirmations == {}
    assert channel.message_id_delivery_tag == {}
    assert channel.write_queue.qsize() == 1
    assert not channel.lock.locked()


async def test_a_publish_without_a_message_id_is_refused_and_leaves_no_trace() -> None:
    channel = FakeChannel()
    batch = publishes(b"a", b"b")
    batch[1][2].message_id = None
    with pytest.raises(ValueError, match="message id"):
        await put_publishes(cast(aiormq.Channel, channel), batch)
    assert (channel.delivery_tag, channel.confirmations, channel.write_queue.qsize()) == (7, {}, 0)


async def test_a_closed_channel_is_refused_before_anything_is_taken() -> None:
    channel = FakeChannel()
    channel.is_closed = True
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
        await put_publishes(cast(aiormq.Channel, channel), publishes(b"a"))
    assert channel.delivery_tag == 7


def test_only_aiormq_channels_with_confirms_are_batched() -> None:
    assert not batchable(FakeChannel())  # not an aiormq channel
    assert not batchable(object())


async def test_outcomes_are_what_gather_with_exceptions_returns() -> None:
    loop = asyncio.get_running_loop()
    confirmed, refused, dropped, late = (loop.create_future() for _ in range(4))
    confirmed.set_result("ack")
    refused.set_exception(aiormq.exceptions.DeliveryError(None, Basic.Nack(delivery_tag=2)))
    dropped.cancel()  # as a closing channel's confirmation may be
    loop.call_soon(late.set_result, "late ack")
    results = await outcomes([confirmed, refused, dropped, late])
    assert results[0] == "ack"
    assert isinstance(results[1], aiormq.exceptions.DeliveryError)
    assert isinstance(results[2], asyncio.CancelledError)
    assert results[3] == "late ack"


async def test_outcomes_awaited_by_a_cancelled_caller_raise_cancellation() -> None:
    loop = asyncio.get_running_loop()
    pending = [loop.create_future(), loop.create_future()]
    waiter = asyncio.create_task(outcomes(pending))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


class BareChannel(aiormq.Channel):
    """An aiormq channel type whose instances set up only what batching needs (no
    connection): ``publisher_confirms`` and, unless told otherwise, the attributes."""

    def __init__(self, *, confirms: bool = True, complete: bool = True) -> None:
        self.publisher_confirms = confirms
        if complete:
            self.confirmations, self.message_id_delivery_tag = {}, {}
            self.delivery_tag, self.write_queue = 0, asyncio.Queue()


class IncompleteChannel(BareChannel):
    def __init__(self) -> None:
        super().__init__(complete=False)


def test_a_channel_without_confirms_or_what_batching_needs_is_not_batched() -> None:
    assert batchable(BareChannel())
    assert batchable(BareChannel())  # again: nothing about the channel changed
    assert not batchable(BareChannel(confirms=False))
    assert not batchable(IncompleteChannel())  # another aiormq version, say
    assert not batchable(IncompleteChannel())
