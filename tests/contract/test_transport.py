"""The transport port contract: the in-memory broker and RabbitMQ deliver alike.

One suite runs over the memory adapter and the AMQP adapter (marked ``rabbitmq``; each test
gets its own random queue prefix).  Conditions are awaited with bounded timeouts; the only
sleeps are short, bounded waits asserting that something does *not* happen.  AMQP-only
behaviour (connection failures, reconnection) follows the shared part.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from aexec.errors import ConfigError, PublishError, TransportError
from aexec.transport import (
    DEAD_LETTER_LIMITS,
    DEAD_LETTER_QUEUE,
    LEGACY_DEAD_LETTER_QUEUE,
    DeadLetter,
    DeadLetterLimits,
    Delivery,
    Subscription,
    Transport,
)
from aexec.transport.amqp import AmqpTransport, from_url
from aexec.transport.memory import MemoryTransport
from tests.plugins.rabbitmq import close_connections, delete_queues, list_entities

WAIT = 10.0  # bound on every wait for something that should happen
QUIET = 0.3  # how long to watch for something that should not happen

ADAPTERS = [
    pytest.param("memory"),
    pytest.param("amqp", marks=pytest.mark.rabbitmq),
]


@dataclass(frozen=True, slots=True)
class Backend:
    kind: str
    url: str = ""
    prefix: str = ""

    def make(self, dead_letters: DeadLetterLimits = DEAD_LETTER_LIMITS) -> Transport:
        if self.kind == "memory":
            return MemoryTransport(dead_letters=dead_letters)
        return AmqpTransport(
            self.url, prefix=self.prefix, connect_timeout=5.0, dead_letters=dead_letters
        )


@pytest.fixture(params=ADAPTERS)
def backend(request: pytest.FixtureRequest) -> Backend:
    kind: str = request.param
    if kind == "memory":
        return Backend(kind)
    return Backend(
        kind, request.getfixturevalue("amqp_url"), request.getfixturevalue("amqp_prefix")
    )


@pytest.fixture
async def transport(backend: Backend) -> AsyncIterator[Transport]:
    transport = backend.make()
    await transport.open()
    try:
        yield transport
    finally:
        await tear_down(transport)


class Inbox:
    """A handler that records its deliveries (and acks them unless told not to)."""

    def __init__(self, *, ack: bool = True) -> None:
        self.deliveries: list[Delivery] = []
        self._ack = ack
        self._changed = asyncio.Condition()

    async def __call__(self, delivery: Delivery) -> None:
        async with self._changed:
            self.deliveries.append(delivery)
            self._changed.notify_all()
        if self._ack:
            await delivery.ack()

    @property
    def bodies(self) -> list[bytes]:
        return [d.body for d in self.deliveries]

    async def wait_for(self, count: int) -> list[Delivery]:
        """The first ``count`` deliveries, once they have arrived (at most ``WAIT`` s)."""
        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(lambda: len(self.deliveries) >= count)
        return self.deliveries[:count]


async def publish_all(transport: Transport, queue: str, bodies: list[bytes]) -> None:
    await asyncio.gather(*(transport.publish(queue, body) for body in bodies))


# -- the shared contract ---------------------------------------------------------------------


async def test_a_published_message_is_delivered_to_a_consumer(transport: Transport) -> None:
    await transport.declare_queue("work")
    inbox = Inbox()
    await transport.consume("work", inbox, prefetch=10)
    await transport.publish("work", b"hello")
    [delivery] = await inbox.wait_for(1)
    assert delivery.body == b"hello"
    assert delivery.redelivered is False


async def test_queue_depths_count_waiting_messages_and_leave_out_missing_queues(
    transport: Transport,
) -> None:
    await transport.declare_queue("q1")
    await transport.declare_queue("q2")
    await transport.publish_many([("q1", b"a", 0), ("q1", b"b", 0), ("q2", b"c", 0)])
    depths = await transport.queue_depths(["q1", "missing", "q2", "also-missing"])
    assert depths == {"q1": 2, "q2": 1}
    got = Inbox()
    await transport.consume("q1", got, prefetch=10)
    await got.wait_for(2)
    assert await transport.queue_depths(["q1"]) == {"q1": 0}


async def test_waiting_messages_are_delivered_highest_priority_first(
    transport: Transport,
) -> None:
    await transport.declare_queue("work", max_priority=10)
    for priority in range(10):
        await transport.publish("work", f"p{priority}".encode(), priority=priority)
    inbox = Inbox()
    await transport.consume("work", inbox, prefetch=1)
    await inbox.wait_for(10)
    assert inbox.bodies == [f"p{priority}".encode() for priority in reversed(range(10))]


async def test_equal_priorities_are_delivered_in_publication_order(transport: Transport) -> None:
    await transport.declare_queue("work")
    bodies = [str(i).encode() for i in range(20)]
    for body in bodies:
        await transport.publish("work", body, priority=3)
    inbox = Inbox()
    await transport.consume("work", inbox, prefetch=1)
    await inbox.wait_for(20)
    assert inbox.bodies == bodies


async def test_no_more_than_prefetch_deliveries_are_unacked_at_once(
    transport: Transport,
) -> None:
    await transport.declare_queue("work")
    await publish_all(transport, "work", [b"1", b"2", b"3", b"4", b"5"])
    inbox = Inbox(ack=False)
    await transport.consume("work", inbox, prefetch=2)
    first = await inbox.wait_for(2)
    await asyncio.sleep(QUIET)
    assert len(inbox.deliveries) == 2
    await first[0].ack()
    await inbox.wait_for(3)
    await asyncio.sleep(QUIET)
    assert len(inbox.deliveries) == 3


async def test_an_acked_message_is_not_delivered_again(transport: Transport) -> None:
    await transport.declare_queue("work")
    await transport.publish("work", b"once")
    inbox = Inbox()
    subscription = await transport.consume("work", inbox, prefetch=1)
    await inbox.wait_for(1)
    await subscription.cancel()
    later = Inbox()
    await transport.consume("work", later, prefetch=1)
    await transport.publish("work", b"marker")
    assert [d.body for d in await later.wait_for(1)] == [b"marker"]
    await asyncio.sleep(QUIET)
    assert later.bodies == [b"marker"]


async def test_reject_with_requeue_redelivers_the_message_marked_redelivered(
    transport: Transport,
) -> None:
    await transport.declare_queue("work")
    seen: list[tuple[bytes, bool]] = []
    done = asyncio.Event()

    async def reject_first(delivery: Delivery) -> None:
        seen.append((delivery.body, delivery.redelivered))
        if len(seen) == 1:
            await delivery.reject(requeue=True)
        else:
            await delivery.ack()
            done.set()

    await transport.consume("work", reject_first, prefetch=1)
    await transport.publish("work", b"again")
    await asyncio.wait_for(done.wait(), WAIT)
    assert seen == [(b"again", False), (b"again", True)]


async def test_reject_without_requeue_dead_letters_the_message(transport: Transport) -> None:
    await transport.declare_queue("work")
    await transport.consume("work", reject_all, prefetch=1)
    dead = Inbox()
    await transport.consume(DEAD_LETTER_QUEUE, dead, prefetch=10)
    await transport.publish("work", b"poison \x00\xff")
    [delivery] = await dead.wait_for(1)
    assert delivery.body == b"poison \x00\xff"


async def test_a_handler_that_raises_dead_letters_its_delivery_and_consuming_goes_on(
    transport: Transport,
) -> None:
    await transport.declare_queue("work")
    handled: list[bytes] = []
    two_handled = asyncio.Event()

    async def fail_on_bad(delivery: Delivery) -> None:
        if delivery.body == b"bad":
            raise ValueError("cannot handle this")
        handled.append(delivery.body)
        await delivery.ack()
        if len(handled) == 2:
            two_handled.set()

    dead = Inbox()
    await transport.consume(DEAD_LETTER_QUEUE, dead, prefetch=10)
    await transport.consume("work", fail_on_bad, prefetch=1)
    for body in (b"good 1", b"bad", b"good 2"):
        await transport.publish("work", body)
    await asyncio.wait_for(two_handled.wait(), WAIT)
    assert [d.body for d in await dead.wait_for(1)] == [b"bad"]
    assert handled == [b"good 1", b"good 2"]


async def test_publishing_to_an_undeclared_queue_raises_and_keeps_the_transport_usable(
    transport: Transport,
) -> None:
    with pytest.raises(TransportError, match="nowhere"):
        await transport.publish("nowhere", b"lost?")
    await transport.declare_queue("work")
    inbox = Inbox()
    await transport.consume("work", inbox, prefetch=1)
    await transport.publish("work", b"still works")
    assert [d.body for d in await inbox.wait_for(1)] == [b"still works"]


async def test_a_batch_is_delivered_whole_by_priority_then_in_publication_order(
    transport: Transport,
) -> None:
    await transport.declare_queue("work", max_priority=10)
    await transport.declare_queue("other", max_priority=10)
    batch = [
        ("work", b"a0", 0),
        ("other", b"o", 2),
        ("work", b"b5", 5),
        ("work", b"c9", 9),
        ("work", b"d5", 5),
        ("work", b"e0", 0),
    ]
    await transport.publish_many(batch)
    work, other = Inbox(), Inbox()
    await transport.consume("work", work, prefetch=1)
    await transport.consume("other", other, prefetch=1)
    await work.wait_for(5)
    assert work.bodies == [b"c9", b"b5", b"d5", b"a0", b"e0"]
    assert [d.body for d in await other.wait_for(1)] == [b"o"]
    await asyncio.sleep(QUIET)
    assert len(work.deliveries) == 5 and len(other.deliveries) == 1


async def test_consuming_from_an_undeclared_queue_raises(transport: Transport) -> None:
    with pytest.raises(TransportError, match="nowhere"):
        await transport.consume("nowhere", Inbox(), prefetch=1)


async def test_cancelling_a_consumer_hands_its_unacked_deliveries_to_another_marked_redelivered(
    transport: Transport,
) -> None:
    await transport.declare_queue("work")
    await publish_all(transport, "work", [b"a", b"b", b"c"])
    holder = Inbox(ack=False)
    subscription = await transport.consume("work", holder, prefetch=3)
    await holder.wait_for(3)
    other = Inbox()
    await transport.consume("work", other, prefetch=10)
    await asyncio.sleep(QUIET)
    assert other.deliveries == []  # all three are still held by the first consumer
    await subscription.cancel()
    redelivered = await other.wait_for(3)
    assert sorted(d.body for d in redelivered) == [b"a", b"b", b"c"]
    assert all(d.redelivered for d in redelivered)


async def test_ack_many_acks_the_deliveries_it_is_given_and_no_other(
    transport: Transport,
) -> None:
    await transport.declare_queue("work")
    for body in [b"0", b"1", b"2", b"3", b"4", b"5"]:
        await transport.publish("work", body)
    holder = Inbox(ack=False)
    subscription = await transport.consume("work", holder, prefetch=10)
    held = {d.body: d for d in await holder.wait_for(6)}
    # The two oldest, one past a gap and the newest: no ack may cover the gaps.
    await transport.ack_many([held[b"0"], held[b"1"], held[b"3"], held[b"5"]])
    # Settled already: no-ops (on RabbitMQ, acking a delivery tag twice kills the channel,
    # and everything it held would come back).
    await held[b"1"].ack()
    await transport.ack_many([held[b"0"], held[b"5"]])
    await subscription.cancel()
    other = Inbox()
    await transport.consume("work", other, prefetch=10)
    back = await other.wait_for(2)
    assert sorted(d.body for d in back) == [b"2", b"4"]
    assert all(d.redelivered for d in back)
    await asyncio.sleep(QUIET)
    assert len(other.deliveries) == 2


async def test_ack_many_frees_prefetch_on_every_queue_it_acks_on(transport: Transport) -> None:
    await transport.declare_queue("a")
    await transport.declare_queue("b")
    for body in [b"a1", b"a2", b"a3"]:
        await transport.publish("a", body)
    for body in [b"b1", b"b2"]:
        await transport.publish("b", body)
    on_a, on_b = Inbox(ack=False), Inbox(ack=False)
    await transport.consume("a", on_a, prefetch=2)
    await transport.consume("b", on_b, prefetch=1)
    first_a, first_b = await on_a.wait_for(2), await on_b.wait_for(1)
    await transport.ack_many([first_b[0], *first_a])
    assert [d.body for d in await on_a.wait_for(3)] == [b"a1", b"a2", b"a3"]
    assert [d.body for d in await on_b.wait_for(2)] == [b"b1", b"b2"]


async def test_cancelling_a_consumer_cancels_its_running_handlers(transport: Transport) -> None:
    await transport.declare_queue("work")
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def block(delivery: Delivery) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    subscription = await transport.consume("work", block, prefetch=1)
    await transport.publish("work", b"stuck")
    await asyncio.wait_for(started.wait(), WAIT)
    await asyncio.wait_for(subscription.cancel(), WAIT)
    assert cancelled.is_set()
    other = Inbox()
    await transport.consume("work", other, prefetch=1)
    [delivery] = await other.wait_for(1)
    assert (delivery.body, delivery.redelivered) == (b"stuck", True)


async def test_a_handler_may_cancel_its_own_subscription_and_carry_on(
    transport: Transport,
) -> None:
    await transport.declare_queue("work")
    subscriptions: list[Subscription] = []
    finished = asyncio.Event()

    async def stop_after_one(delivery: Delivery) -> None:
        await subscriptions[0].cancel()
        await asyncio.sleep(0)
        finished.set()

    subscriptions.append(await transport.consume("work", stop_after_one, prefetch=1))
    await transport.publish("work", b"last")
    await asyncio.wait_for(finished.wait(), WAIT)


async def test_two_consumers_on_one_queue_share_the_work(transport: Transport) -> None:
    await transport.declare_queue("work")
    first, second = Inbox(ack=False), Inbox(ack=False)
    await transport.consume("work", first, prefetch=1)
    await transport.consume("work", second, prefetch=1)
    await publish_all(transport, "work", [b"1", b"2", b"3", b"4"])
    # Holding one unacked delivery each, neither can take the other's share.
    [one] = await first.wait_for(1)
    [two] = await second.wait_for(1)
    await one.ack()
    await two.ack()
    await first.wait_for(2)
    await second.wait_for(2)
    assert sorted(first.bodies + second.bodies) == [b"1", b"2", b"3", b"4"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        bytes(range(256)) * 4,
        b"\x00" * 1000,
        b"\r\n\x1b[0m\xff\xfe",
        os.urandom(1024 * 1024 + 7),  # several AMQP frames
    ],
    ids=["empty", "all-bytes", "nul", "controls", "1MiB-random"],
)
async def test_bodies_arrive_byte_identical(transport: Transport, body: bytes) -> None:
    await transport.declare_queue("work")
    inbox = Inbox()
    await transport.consume("work", inbox, prefetch=1)
    await transport.publish("work", body)
    [delivery] = await inbox.wait_for(1)
    assert delivery.body == body


async def test_many_messages_all_arrive_exactly_once(transport: Transport) -> None:
    count = 2000
    await transport.declare_queue("work")
    inbox = Inbox()
    await transport.consume("work", inbox, prefetch=50)
    bodies = [i.to_bytes(4, "big") for i in range(count)]
    for start in range(0, count, 200):
        await publish_all(transport, "work", bodies[start : start + 200])
    await inbox.wait_for(count)
    await asyncio.sleep(QUIET)
    counts = Counter(inbox.bodies)
    assert len(counts) == count
    assert set(counts) == set(bodies)
    assert max(counts.values()) == 1


async def test_a_subscription_cancelled_twice_is_cancelled_once(transport: Transport) -> None:
    await transport.declare_queue("work")
    subscription = await transport.consume("work", Inbox(), prefetch=1)
    await subscription.cancel()
    await subscription.cancel()


async def test_a_broadcast_reaches_every_current_subscriber_of_its_topic_once(
    transport: Transport,
) -> None:
    first, second, elsewhere = Inbox(), Inbox(), Inbox()
    await transport.subscribe("control", first)
    await transport.subscribe("control", second)
    await transport.subscribe("other", elsewhere)
    await transport.broadcast("control", b"ping")
    assert [d.body for d in await first.wait_for(1)] == [b"ping"]
    assert [d.body for d in await second.wait_for(1)] == [b"ping"]
    await asyncio.sleep(QUIET)
    assert (first.bodies, second.bodies, elsewhere.bodies) == ([b"ping"], [b"ping"], [])


async def test_a_broadcast_nobody_hears_is_dropped_without_error(transport: Transport) -> None:
    await transport.broadcast("control", b"into the void")
    late = Inbox()
    await transport.subscribe("control", late)
    await transport.broadcast("control", b"heard")
    assert [d.body for d in await late.wait_for(1)] == [b"heard"]
    await asyncio.sleep(QUIET)
    assert late.bodies == [b"heard"]


async def test_a_cancelled_subscriber_hears_no_more_broadcasts(transport: Transport) -> None:
    gone, staying = Inbox(), Inbox()
    subscription = await transport.subscribe("control", gone)
    await transport.subscribe("control", staying)
    await subscription.cancel()
    await transport.broadcast("control", b"after")
    await staying.wait_for(1)
    await asyncio.sleep(QUIET)
    assert gone.bodies == []


async def test_broadcast_deliveries_are_already_settled(transport: Transport) -> None:
    """Rejecting a broadcast neither requeues nor dead-letters it, and a failing handler
    does not stop the subscription."""
    dead = Inbox()
    await transport.consume(DEAD_LETTER_QUEUE, dead, prefetch=10)
    seen: list[bytes] = []
    second_seen = asyncio.Event()

    async def reject_then_fail(delivery: Delivery) -> None:
        seen.append(delivery.body)
        if len(seen) == 2:
            second_seen.set()
        await delivery.reject(requeue=len(seen) == 1)
        await delivery.reject(requeue=False)
        raise ValueError("a failing control handler")

    await transport.subscribe("control", reject_then_fail)
    await transport.broadcast("control", b"1")
    await transport.broadcast("control", b"2")
    await asyncio.wait_for(second_seen.wait(), WAIT)
    await asyncio.sleep(QUIET)
    assert (seen, dead.bodies) == ([b"1", b"2"], [])


# -- stopping a consumer without giving back what it holds ----------------------------------


async def test_a_stopped_consumer_receives_nothing_more_and_keeps_what_it_holds(
    transport: Transport,
) -> None:
    await transport.declare_queue("work")
    for body in (b"1", b"2", b"3"):
        await transport.publish("work", body)
    holder = Inbox(ack=False)
    subscription = await transport.consume("work", holder, prefetch=2)
    held = await holder.wait_for(2)
    await subscription.stop()
    other = Inbox()
    await transport.consume("work", other, prefetch=10)
    [third] = await other.wait_for(1)
    for delivery in held:
        await delivery.ack()  # still possible: stopping kept the channel
    await subscription.cancel()
    await asyncio.sleep(QUIET)
    assert (holder.bodies, other.bodies) == ([b"1", b"2"], [b"3"])
    assert third.redelivered is False


async def test_cancelling_a_stopped_consumer_gives_back_what_it_still_holds(
    transport: Transport,
) -> None:
    await transport.declare_queue("work")
    await transport.publish("work", b"held")
    holder = Inbox(ack=False)
    subscription = await transport.consume("work", holder, prefetch=1)
    await holder.wait_for(1)
    await subscription.stop()
    other = Inbox()
    await transport.consume("work", other, prefetch=1)
    await asyncio.sleep(QUIET)
    assert other.deliveries == []  # stopping gave nothing back
    await subscription.cancel()
    [delivery] = await other.wait_for(1)
    assert (delivery.body, delivery.redelivered) == (b"held", True)


async def test_deliveries_that_reach_a_stopped_consumer_go_back_unmarked_with_their_priority(
    transport: Transport,
) -> None:
    await transport.declare_queue("work", max_priority=10)
    for body, priority in ((b"first", 9), (b"second", 5), (b"low", 1)):
        await transport.publish("work", body, priority=priority)
    seen: list[bytes] = []
    subscriptions: list[Subscription] = []
    stopped = asyncio.Event()

    async def stop_at_first(delivery: Delivery) -> None:
        seen.append(delivery.body)
        await subscriptions[0].stop()
        await delivery.ack()
        stopped.set()

    # With a prefetch of 2, "second" reaches the consumer with "first"; the handler stops
    # the subscription before anything else is handled.
    subscriptions.append(await transport.consume("work", stop_at_first, prefetch=2))
    await asyncio.wait_for(stopped.wait(), WAIT)
    await subscriptions[0].cancel()  # waits for deliveries being handed back
    other = Inbox()
    await transport.consume("work", other, prefetch=1)
    handed_back = await other.wait_for(2)
    await asyncio.sleep(QUIET)
    assert seen == [b"first"]
    # Not marked redelivered, and still ahead of the lower priority that waited meanwhile.
    assert [(d.body, d.redelivered) for d in other.deliveries] == [
        (b"second", False),
        (b"low", False),
    ]
    assert handed_back == other.deliveries


async def test_stopping_twice_or_after_cancelling_does_nothing(transport: Transport) -> None:
    await transport.declare_queue("work")
    subscription = await transport.consume("work", Inbox(), prefetch=1)
    await subscription.stop()
    await subscription.stop()
    await subscription.cancel()
    await subscription.stop()
    await transport.publish("work", b"unheard")
    other = Inbox()
    await transport.consume("work", other, prefetch=1)
    assert [(d.body, d.redelivered) for d in await other.wait_for(1)] == [(b"unheard", False)]


# -- retained topics ---------------------------------------------------------------------------


async def test_follow_returns_once_the_retained_announcements_were_handled_oldest_first(
    transport: Transport,
) -> None:
    for body in (b"1", b"2", b"3"):
        await transport.announce("ended", body)
    heard = Inbox()
    await transport.follow("ended", heard)
    assert heard.bodies == [b"1", b"2", b"3"]  # handled before follow() returned
    await transport.announce("ended", b"4")
    await heard.wait_for(4)
    await asyncio.sleep(QUIET)
    assert heard.bodies == [b"1", b"2", b"3", b"4"]
    assert not any(d.redelivered for d in heard.deliveries)


async def test_following_a_topic_nobody_announced_on_returns_and_hears_what_comes(
    transport: Transport,
) -> None:
    heard = Inbox()
    await transport.follow("ended", heard)
    assert heard.deliveries == []
    await transport.announce("ended", b"first")
    assert [d.body for d in await heard.wait_for(1)] == [b"first"]


async def test_every_follower_hears_every_announcement_of_its_topic_and_no_other(
    transport: Transport,
) -> None:
    await transport.announce("ended", b"before")
    first, second, elsewhere = Inbox(), Inbox(), Inbox()
    await transport.follow("ended", first)
    await transport.follow("ended", second)  # its marker reaches no handler of first's
    await transport.follow("other", elsewhere)
    await transport.announce("ended", b"after")
    await first.wait_for(2)
    await second.wait_for(2)
    await asyncio.sleep(QUIET)
    assert first.bodies == second.bodies == [b"before", b"after"]
    assert elsewhere.bodies == []


async def test_a_follower_is_handed_announcements_one_at_a_time_in_order(
    transport: Transport,
) -> None:
    bodies = [str(i).encode() for i in range(20)]
    handled: list[bytes] = []
    busy = False
    all_handled = asyncio.Event()

    async def slow(delivery: Delivery) -> None:
        nonlocal busy
        assert not busy, "two announcements handled at once"
        busy = True
        await asyncio.sleep(0.01)
        handled.append(delivery.body)
        busy = False
        if len(handled) == len(bodies):
            all_handled.set()

    for body in bodies[:10]:
        await transport.announce("ended", body)
    await transport.follow("ended", slow)
    assert handled == bodies[:10]
    for body in bodies[10:]:
        await transport.announce("ended", body)
    await asyncio.wait_for(all_handled.wait(), WAIT)
    assert handled == bodies


async def test_a_follower_whose_handler_fails_goes_on_with_the_next_announcement(
    transport: Transport,
) -> None:
    handled: list[bytes] = []

    async def fail_on_bad(delivery: Delivery) -> None:
        if delivery.body == b"bad":
            raise ValueError("cannot handle this")
        handled.append(delivery.body)

    for body in (b"good 1", b"bad", b"good 2"):
        await transport.announce("ended", body)
    await transport.follow("ended", fail_on_bad)
    assert handled == [b"good 1", b"good 2"]


async def test_a_cancelled_follower_hears_no_more_announcements(transport: Transport) -> None:
    gone, staying = Inbox(), Inbox()
    subscription = await transport.follow("ended", gone)
    await transport.follow("ended", staying)
    await subscription.cancel()
    await subscription.cancel()
    await transport.announce("ended", b"after")
    await staying.wait_for(1)
    await asyncio.sleep(QUIET)
    assert gone.bodies == []


async def test_a_memory_topic_retains_its_newest_announcements_up_to_its_size() -> None:
    transport = MemoryTransport(retained_max_bytes=8)
    await transport.open()
    try:
        for body in (b"1111", b"2222", b"3333"):
            await transport.announce("ended", body)
        heard = Inbox()
        await transport.follow("ended", heard)
        assert heard.bodies == [b"2222", b"3333"]
    finally:
        await transport.close()


async def reject_all(delivery: Delivery) -> None:
    await delivery.reject(requeue=False)


# -- dead letters ----------------------------------------------------------------------------


async def dead_letter(transport: Transport, queue: str, bodies: list[bytes], reason: str) -> None:
    """Publish ``bodies`` to ``queue`` and dead-letter each with ``reason``; returns once
    every one is in the dead-letter queue."""
    rejected = asyncio.Event()
    count = 0

    async def reject(delivery: Delivery) -> None:
        nonlocal count
        await delivery.reject(requeue=False, reason=reason)
        count += 1
        if count == len(bodies):
            rejected.set()

    subscription = await transport.consume(queue, reject, prefetch=10)
    for priority, body in enumerate(bodies):
        await transport.publish(queue, body, priority=priority)
    await asyncio.wait_for(rejected.wait(), WAIT)
    await subscription.cancel()


async def test_a_dead_letter_says_why_where_from_and_when(transport: Transport) -> None:
    await transport.declare_queue("work")
    before = time.time()
    await dead_letter(transport, "work", [b"poison \x00\xff", b"second"], "bad input: NUL")
    letters = await transport.dead_letters()
    assert [(d.queue, d.reason, d.body) for d in letters] == [
        ("work", "bad input: NUL", b"poison \x00\xff"),
        ("work", "bad input: NUL", b"second"),
    ]
    assert [d.priority for d in letters] == [0, 1]
    assert all(
        d.dead_at is not None and before - 1 <= d.dead_at <= time.time() + 1 for d in letters
    )
    assert len({d.id for d in letters}) == 2


async def test_listing_dead_letters_leaves_them_queued(transport: Transport) -> None:
    await transport.declare_queue("work")
    await dead_letter(transport, "work", [b"1", b"2", b"3"], "no")
    first = await transport.dead_letters()
    assert [d.body for d in await transport.dead_letters(limit=2)] == [b"1", b"2"]
    again = await transport.dead_letters()
    assert [(d.id, d.body) for d in again] == [(d.id, d.body) for d in first]


async def test_replaying_dead_letters_publishes_them_back_to_their_queue_once(
    transport: Transport,
) -> None:
    await transport.declare_queue("work")
    await dead_letter(transport, "work", [b"a", b"b", b"c"], "try later")
    letters = await transport.dead_letters()
    replayed = await transport.replay_dead_letters([letters[0].id, letters[2].id, "unknown"])
    assert sorted((r.letter.body, r.error) for r in replayed) == [(b"a", None), (b"c", None)]
    assert [d.body for d in await transport.dead_letters()] == [b"b"]
    inbox = Inbox()
    await transport.consume("work", inbox, prefetch=10)
    assert sorted(d.body for d in await inbox.wait_for(2)) == [b"a", b"c"]
    assert [r.letter.body for r in await transport.replay_dead_letters()] == [b"b"]
    assert sorted(d.body for d in await inbox.wait_for(3)) == [b"a", b"b", b"c"]
    assert await transport.dead_letters() == []
    await asyncio.sleep(QUIET)
    assert len(inbox.deliveries) == 3


async def test_a_dead_letter_whose_queue_is_gone_stays_dead(transport: Transport) -> None:
    await transport.declare_queue("work")
    await dead_letter(transport, "work", [b"orphan"], "no")
    await transport.delete_queues(["work"])
    [replay] = await transport.replay_dead_letters()
    assert replay.letter.body == b"orphan"
    assert replay.error is not None and "work" in replay.error
    assert [d.body for d in await transport.dead_letters()] == [b"orphan"]


async def test_the_dead_letter_queue_keeps_only_the_newest_over_its_length_limit(
    backend: Backend,
) -> None:
    transport = backend.make(DeadLetterLimits(max_length=3))
    await transport.open()
    try:
        await transport.declare_queue("work")
        await dead_letter(transport, "work", [str(i).encode() for i in range(5)], "no")
        assert [d.body for d in await transport.dead_letters()] == [b"2", b"3", b"4"]
    finally:
        await tear_down(transport)


async def test_dead_letters_expire_after_their_time_to_live(backend: Backend) -> None:
    transport = backend.make(DeadLetterLimits(ttl=0.3))
    await transport.open()
    try:
        await transport.declare_queue("work")
        await dead_letter(transport, "work", [b"short-lived"], "no")
        await poll_dead_letters(transport, lambda letters: not letters)
    finally:
        await tear_down(transport)


async def test_a_failing_handler_dead_letters_with_its_error_as_the_reason(
    transport: Transport,
) -> None:
    await transport.declare_queue("work")
    failed = asyncio.Event()

    async def fail(delivery: Delivery) -> None:
        failed.set()
        raise ValueError("cannot handle this")

    await transport.consume("work", fail, prefetch=1)
    await transport.publish("work", b"bad")
    await asyncio.wait_for(failed.wait(), WAIT)
    letters = await poll_dead_letters(transport, bool)
    assert [(d.queue, d.body) for d in letters] == [("work", b"bad")]
    assert letters[0].reason == "handler failed: ValueError: cannot handle this"


async def poll_dead_letters(
    transport: Transport, until: Callable[[list[DeadLetter]], bool]
) -> list[DeadLetter]:
    """The dead letters once ``until`` holds for them (at most ``WAIT`` s): polled, as what
    is awaited is a timer or a hand-over inside the broker."""
    async with asyncio.timeout(WAIT):
        while True:
            letters = await transport.dead_letters()
            if until(letters):
                return letters
            await asyncio.sleep(0.05)


async def tear_down(transport: Transport) -> None:
    if isinstance(transport, AmqpTransport):
        await transport.delete_topology()
    await transport.close()


# -- AMQP only -------------------------------------------------------------------------------


@pytest.fixture
async def silent_server() -> AsyncIterator[tuple[str, int]]:
    """A TCP server that accepts connections and never answers (a hung broker)."""
    writers: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        yield host, port
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.rabbitmq
async def test_a_batch_with_a_message_for_a_missing_queue_names_it_alone_unsent(
    amqp_url: str, amqp_prefix: str
) -> None:
    transport = AmqpTransport(amqp_url, prefix=amqp_prefix, connect_timeout=5.0)
    await transport.open()
    try:
        await transport.declare_queue("work")
        inbox = Inbox()
        await transport.consume("work", inbox, prefetch=10)
        batch = [("work", b"a", 0), ("nowhere", b"lost", 3), ("work", b"b", 0)]
        with pytest.raises(PublishError, match="1 of 3") as raised:
            await transport.publish_many(batch)
        assert raised.value.unsent == [("nowhere", b"lost", 3)]
        assert [d.body for d in await inbox.wait_for(2)] == [b"a", b"b"]
        await transport.publish_many([("work", b"c", 0), ("work", b"d", 0)])
        assert [d.body for d in await inbox.wait_for(4)] == [b"a", b"b", b"c", b"d"]
    finally:
        await tear_down(transport)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_broker_raises_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = closed_port()
    transport = AmqpTransport(f"amqp://guest:s3cr3t-pw@127.0.0.1:{port}/", connect_timeout=2.0)
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(TransportError) as raised:
        await transport.open()
    assert time.monotonic() - started < 2.0 + 1.0
    message = str(raised.value)
    assert message.startswith(f"cannot connect to RabbitMQ at amqp://127.0.0.1:{port}/: ")
    assert_no_secret("s3cr3t-pw", message, caplog.text)


async def test_a_broker_that_never_answers_raises_within_the_connect_timeout(
    silent_server: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    host, port = silent_server
    transport = AmqpTransport(f"amqp://admin:s3cr3t-pw@{host}:{port}/%2Fprod", connect_timeout=0.5)
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(TransportError) as raised:
        await transport.open()
    assert time.monotonic() - started < 0.5 + 1.0
    assert str(raised.value).startswith(f"cannot connect to RabbitMQ at amqp://{host}:{port}/")
    assert_no_secret("s3cr3t-pw", str(raised.value), caplog.text)


def assert_no_secret(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text


async def test_using_a_transport_that_is_not_open_raises() -> None:
    transport = AmqpTransport("amqp://guest:guest@127.0.0.1:1/")
    with pytest.raises(TransportError, match="not open"):
        await transport.publish("work", b"x")


def test_from_url_reads_prefix_and_connect_timeout_and_rejects_other_schemes() -> None:
    transport = from_url("amqp://u:pw@broker:5673/vh?prefix=p1&connect_timeout=2.5&heartbeat=5")
    assert transport.prefix == "p1"
    assert transport.broker_name("work") == "p1.work"
    assert AmqpTransport.from_url("amqps://broker/").prefix == "aexec"
    assert "pw" not in repr(transport)
    with pytest.raises(ConfigError):
        from_url("redis://u:pw@broker/")
    with pytest.raises(ConfigError):
        from_url("amqp://broker/?connect_timeout=soon")


@pytest.mark.rabbitmq
async def test_after_the_connection_is_forced_closed_publishing_and_consuming_resume(
    amqp_url: str, amqp_prefix: str
) -> None:
    transport = AmqpTransport(amqp_url, prefix=amqp_prefix, connect_timeout=5.0)
    await transport.open()
    try:
        await transport.declare_queue("work")
        held = Inbox(ack=False)
        await transport.consume("work", held, prefetch=1)
        listener = Inbox()
        await transport.subscribe("control", listener)
        await transport.publish("work", b"before")
        [stale] = await held.wait_for(1)

        assert await close_connections(amqp_prefix) == 1

        await publish_with_retry(transport, "work", b"after")
        # The consumer was restored with its prefetch of 1: the unacked delivery comes back
        # first, and the new message once that one is acked.
        again = (await held.wait_for(2))[1]
        assert (again.body, again.redelivered) == (b"before", True)
        with pytest.raises(TransportError, match="redeliver"):
            await stale.ack()  # its channel is gone; the broker already requeued it
        await again.ack()
        after = (await held.wait_for(3))[2]
        assert (after.body, after.redelivered) == (b"after", False)
        await after.ack()
        # Topology and the publish channel are intact too: undeclared queues still raise.
        with pytest.raises(TransportError, match="not routed"):
            await transport.publish("nowhere", b"x")
        # The topic subscriber's exclusive queue and binding were restored.
        await broadcast_until_heard(transport, "control", listener)
    finally:
        await transport.delete_topology()
        await transport.close()


@pytest.mark.rabbitmq
async def test_a_handler_running_when_the_connection_drops_finishes_and_its_message_returns(
    amqp_url: str, amqp_prefix: str
) -> None:
    transport = AmqpTransport(amqp_url, prefix=amqp_prefix, connect_timeout=5.0)
    await transport.open()
    try:
        await transport.declare_queue("work")
        started, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()
        outcome: list[str] = []
        again = Inbox()

        async def slow(delivery: Delivery) -> None:
            if delivery.redelivered:
                await again(delivery)
                return
            started.set()
            await release.wait()
            try:
                await delivery.ack()
                outcome.append("acked")
            except TransportError:
                outcome.append("ack failed")
            finished.set()

        await transport.consume("work", slow, prefetch=2)
        await transport.publish("work", b"long step")
        await asyncio.wait_for(started.wait(), WAIT)
        await close_connections(amqp_prefix)
        [delivery] = await again.wait_for(1)  # the broker requeued it; the restored consumer
        assert delivery.body == b"long step"  # got it back while the first handler still runs
        release.set()
        await asyncio.wait_for(finished.wait(), WAIT)
        assert outcome == ["ack failed"]
    finally:
        await transport.delete_topology()
        await transport.close()


@pytest.mark.rabbitmq
async def test_a_follower_goes_on_hearing_announcements_after_the_connection_is_forced_closed(
    amqp_url: str, amqp_prefix: str
) -> None:
    transport = AmqpTransport(amqp_url, prefix=amqp_prefix, connect_timeout=5.0)
    await transport.open()
    try:
        await transport.announce("ended", b"before")
        heard = Inbox()
        await transport.follow("ended", heard)
        assert await close_connections(amqp_prefix) == 1
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    await transport.announce("ended", b"after")
                    break
                except TransportError:
                    await asyncio.sleep(0.1)
            while b"after" not in heard.bodies:
                await heard.wait_for(len(heard.deliveries) + 1)
        # The restored follower reads the stream from its start again: at least once each.
        assert set(heard.bodies) == {b"before", b"after"}
        assert heard.bodies[0] == b"before"
    finally:
        await transport.delete_topology()
        await transport.close()


@pytest.mark.rabbitmq
async def test_a_retained_topic_is_a_stream_with_retention_on_the_broker(
    amqp_url: str, amqp_prefix: str
) -> None:
    transport = AmqpTransport(amqp_url, prefix=amqp_prefix, connect_timeout=5.0)
    await transport.open()
    try:
        await transport.announce("ended", b"x")
        name = transport.broker_name("retained.ended")
        queues = await list_entities(amqp_url, amqp_prefix, "list_queues")
        if not queues:
            pytest.skip("listing queues needs rabbitmqctl and a local broker")
        assert name in queues
    finally:
        await transport.delete_topology()
        await transport.close()


@pytest.mark.rabbitmq
async def test_queues_deleted_behind_the_transports_back_are_declared_again_on_reconnect(
    amqp_url: str, amqp_prefix: str
) -> None:
    transport = AmqpTransport(amqp_url, prefix=amqp_prefix, connect_timeout=5.0)
    await transport.open()
    try:
        await transport.declare_queue("work")
        await transport.consume("work", reject_all, prefetch=1)
        dead = Inbox()
        await transport.consume(DEAD_LETTER_QUEUE, dead, prefetch=1)
        names = [transport.broker_name(q) for q in ("work", DEAD_LETTER_QUEUE)]
        await delete_queues(amqp_url, names)
        await close_connections(amqp_prefix)

        await publish_with_retry(transport, "work", b"lost and found")
        assert [d.body for d in await dead.wait_for(1)] == [b"lost and found"]
    finally:
        await transport.delete_topology()
        await transport.close()


async def broadcast_until_heard(transport: Transport, topic: str, listener: Inbox) -> None:
    """Broadcast until ``listener`` hears one (at most ``WAIT`` s): broadcasts sent before the
    subscriber's queue is restored are dropped, by design."""
    async with asyncio.timeout(WAIT):
        while True:
            heard = len(listener.deliveries)
            await publish_with_retry(transport, topic, b"are you there?", broadcast=True)
            try:
                async with asyncio.timeout(0.2):
                    await listener.wait_for(heard + 1)
                return
            except TimeoutError:
                continue


async def publish_with_retry(
    transport: Transport, queue: str, body: bytes, *, broadcast: bool = False
) -> None:
    """Publish, retrying while the connection is being re-established (at most ``WAIT`` s).

    A publish racing the connection loss may fail: the caller retries (duplicates are
    possible in general; here the first attempt either failed or was never sent)."""
    async with asyncio.timeout(WAIT):
        while True:
            try:
                if broadcast:
                    await transport.broadcast(queue, body)
                else:
                    await transport.publish(queue, body)
                return
            except TransportError:
                await asyncio.sleep(0.1)


@pytest.mark.rabbitmq
async def test_a_broker_set_up_by_an_earlier_version_keeps_working_and_its_dead_letters_replay(
    amqp_url: str, amqp_prefix: str
) -> None:
    """Earlier versions declared every queue to dead-letter (broker-side) into the unbounded
    ``aexec.dead``.  RabbitMQ refuses other arguments for an existing queue, so queues keep
    theirs; the bounded dead-letter queue has a new name, and the old one is still read."""
    import aio_pika

    legacy = f"{amqp_prefix}.{LEGACY_DEAD_LETTER_QUEUE}"
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(legacy, durable=True)
        old_arguments = {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": legacy,
            "x-max-priority": 10,
        }
        work = await channel.declare_queue(
            f"{amqp_prefix}.work", durable=True, arguments=old_arguments
        )
        await channel.default_exchange.publish(aio_pika.Message(b"old poison"), work.name)
        message = await work.get(timeout=WAIT)
        await message.reject(requeue=False)  # the broker dead-letters it, as it used to

    transport = AmqpTransport(amqp_url, prefix=amqp_prefix, connect_timeout=5.0)
    await transport.open()
    try:
        await transport.declare_queue("work")  # the same arguments as before: accepted
        letters = await poll_dead_letters(transport, bool)
        assert [(d.queue, d.reason, d.body) for d in letters] == [
            ("work", "rejected", b"old poison")
        ]
        inbox = Inbox()
        await transport.consume("work", inbox, prefetch=1)
        [replay] = await transport.replay_dead_letters([letters[0].id])
        assert replay.error is None
        assert [d.body for d in await inbox.wait_for(1)] == [b"old poison"]
        assert await transport.dead_letters() == []
    finally:
        await transport.delete_queues([LEGACY_DEAD_LETTER_QUEUE])
        await tear_down(transport)


@pytest.mark.rabbitmq
async def test_a_queue_deleted_while_consumed_is_declared_again_and_consumed(
    amqp_url: str, amqp_prefix: str
) -> None:
    """The broker cancels the consumer of a deleted queue (no reconnect): the subscription
    declares the queue again and consumes it with the same handler."""
    transport = AmqpTransport(amqp_url, prefix=amqp_prefix, connect_timeout=5.0)
    await transport.open()
    try:
        await transport.declare_queue("work")
        inbox = Inbox()
        await transport.consume("work", inbox, prefetch=1)
        await transport.publish("work", b"before")
        await inbox.wait_for(1)
        await delete_queues(amqp_url, [transport.broker_name("work")])

        await publish_with_retry(transport, "work", b"after")  # unroutable until declared
        assert [d.body for d in await inbox.wait_for(2)] == [b"before", b"after"]
    finally:
        await transport.delete_topology()
        await transport.close()


@pytest.mark.rabbitmq
async def test_a_stopped_consumer_does_not_consume_again_after_a_reconnect(
    amqp_url: str, amqp_prefix: str
) -> None:
    transport = AmqpTransport(amqp_url, prefix=amqp_prefix, connect_timeout=5.0)
    await transport.open()
    try:
        await transport.declare_queue("work")
        stopped = Inbox()
        subscription = await transport.consume("work", stopped, prefetch=1)
        await transport.publish("work", b"before")
        await stopped.wait_for(1)
        await subscription.stop()
        assert await close_connections(amqp_prefix) == 1

        await publish_with_retry(transport, "work", b"after")
        fresh = Inbox()
        await transport.consume("work", fresh, prefetch=1)
        assert [d.body for d in await fresh.wait_for(1)] == [b"after"]
        assert [d.body for d in stopped.deliveries] == [b"before"]
    finally:
        await transport.delete_topology()
        await transport.close()
