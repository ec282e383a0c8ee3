"""The transport port: durable priority queues carrying opaque bytes.

Adapters: :mod:`aexec.transport.memory` (embedded mode, tests) and
:mod:`aexec.transport.amqp` (RabbitMQ through aio-pika), chosen by URL with
:func:`from_url`.  Both pass ``tests/contract/test_transport.py``.

Semantics every adapter keeps:

* ``publish`` returns once the message is safely queued (publisher confirm); publishing to
  a queue that does not exist raises :class:`~aexec.errors.UnroutableError` (a
  :class:`~aexec.errors.TransportError`) instead of dropping the message.
* Deliveries are at-least-once: an unacked delivery is redelivered, marked
  ``redelivered``, if its consumer goes away; ``reject(requeue=False, reason=...)``
  dead-letters it to :data:`DEAD_LETTER_QUEUE` with why, where from and when (a
  :class:`DeadLetter`).
* ``Subscription.stop()`` stops receiving without giving anything back: deliveries the
  handler holds stay its own until it settles them (or until ``cancel()``, which gives back
  what is still unsettled); a delivery that reaches the subscription after ``stop()`` is
  handed back to its queue *unmarked* (not redelivered), with its priority.
* Higher ``priority`` (0..max_priority) is delivered first among waiting messages.
* At most ``prefetch`` deliveries per consumer are unacked at a time.
* ``ack_many(deliveries)`` acks them all with as few broker frames as it can (RabbitMQ:
  ``basic.ack`` with ``multiple`` over each consumer's oldest unsettled deliveries), and
  never settles a delivery that is not in the list.
* ``broadcast(topic, body)`` reaches every current ``subscribe(topic, ...)`` handler once
  (fire-and-forget control traffic: nothing is kept for subscribers that come later).
* ``announce(topic, body)`` appends to a *retained* topic (confirmed); ``follow(topic,
  handler)`` hands the handler every retained announcement, oldest first, then every new
  one, one at a time and in order, and returns once the retained ones were handled.
  Announcements are kept for :data:`~aexec.wire.RETAINED_MAX_AGE` seconds and at most
  :data:`~aexec.wire.RETAINED_MAX_BYTES` bytes per topic.  A follower may be handed an
  announcement again (after a reconnection): handlers are idempotent.

A transport whose consumers are all in this process (the memory transport: an embedded run,
the engine tests) may also take a message as the object it is (:class:`HandsOver`): queued
and delivered under the rules above, it is encoded only if it must become bytes (read as
``body``, dead-lettered).

Dead letters are bounded: :data:`DEAD_LETTER_QUEUE` keeps at most 10,000 messages and
1 GiB (the oldest go first), each for at most 14 days (:data:`DEAD_LETTER_LIMITS`).
``dead_letters()`` lists them without taking them off the queue; ``replay_dead_letters()``
publishes them back to the queue they came from.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aexec.errors import TransportError
from aexec.wire import MAX_PRIORITY

log = logging.getLogger(__name__)

DEAD_LETTER_QUEUE = "dead-letters"
"""Where rejected messages go.  RabbitMQ never changes a declared queue's arguments, so the
bounded queue has a name of its own: the unbounded one of earlier versions,
:data:`LEGACY_DEAD_LETTER_QUEUE`, is still read (listed, replayed) where it exists, and
other queues keep naming it as their broker-side dead-letter target (their arguments
cannot change either); aexec itself dead-letters by publishing here."""

LEGACY_DEAD_LETTER_QUEUE = "aexec.dead"


@dataclass(frozen=True, slots=True)
class DeadLetterLimits:
    """Bounds of :data:`DEAD_LETTER_QUEUE`: at most ``max_length`` messages and ``max_bytes``
    bytes (over either, the oldest go), each kept at most ``ttl`` seconds.  On RabbitMQ
    they are the queue's arguments, which every process must declare alike: change them
    together with the queue's name."""

    max_length: int = 10_000
    max_bytes: int = 1024 * 1024 * 1024
    ttl: float = 14 * 24 * 3600.0


DEAD_LETTER_LIMITS = DeadLetterLimits()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered message, as :meth:`Transport.dead_letters` lists it.

    ``id`` names it for :meth:`Transport.replay_dead_letters`; ``queue`` is the (logical)
    queue it was taken from, None when unknown; ``reason`` says why it was dead-lettered;
    ``dead_at`` is when (seconds since the epoch, None when unknown); ``body`` and
    ``priority`` are the message's own.
    """

    id: str
    queue: str | None
    reason: str
    dead_at: float | None
    body: bytes
    priority: int = 0


@dataclass(frozen=True, slots=True)
class Replay:
    """What :meth:`Transport.replay_dead_letters` did with one dead letter: published it
    back to its queue (``error`` None), or left it where it was, saying why."""

    letter: DeadLetter
    error: str | None = None


class Delivery(Protocol):
    @property
    def body(self) -> bytes: ...

    @property
    def redelivered(self) -> bool: ...

    async def ack(self) -> None: ...

    async def reject(self, requeue: bool = False, *, reason: str | None = None) -> None:
        """Requeue the message, or (``requeue`` False) dead-letter it, keeping ``reason``
        (default ``"rejected"``), the queue it came from and the time with it."""


Handler = Callable[[Delivery], Awaitable[None]]


class Announcement:
    """A retained announcement handed to a follower: settled already, never redelivered."""

    __slots__ = ("body",)

    def __init__(self, body: bytes) -> None:
        self.body = body

    @property
    def redelivered(self) -> bool:
        return False

    async def ack(self) -> None:
        return None

    async def reject(self, requeue: bool = False, *, reason: str | None = None) -> None:
        return None


async def settle(
    delivery: Delivery, *, reject: bool = False, requeue: bool = False, reason: str | None = None
) -> bool:
    """Ack ``delivery``, or reject it: back to its queue with ``requeue``, else dead-lettered
    saying ``reason``.  False if its channel died meanwhile: the broker gives it back anyway
    (a consumer's effect is committed before it settles, and a duplicate is ignored)."""
    try:
        if reject or requeue:
            await delivery.reject(requeue=requeue, reason=reason)
        else:
            await delivery.ack()
    except TransportError as exc:
        log.info("could not settle a delivery (the broker gives it back): %s", exc)
        return False
    return True


async def ack_each(deliveries: Iterable[Delivery]) -> None:
    """Ack each of ``deliveries`` on its own: :meth:`Transport.ack_many` for an adapter (or a
    delivery) that has no cheaper way.  Tries every one; then raises the first
    :class:`~aexec.errors.TransportError`, if any (those are redelivered anyway)."""
    failure: TransportError | None = None
    for delivery in deliveries:
        try:
            await delivery.ack()
        except TransportError as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


def retained_queue(topic: str) -> str:
    """The queue (a RabbitMQ stream) that keeps the announcements of ``topic``."""
    return f"retained.{topic}"


class Subscription(Protocol):
    async def stop(self) -> None:
        """Receive nothing more, and give nothing back: deliveries already handed to the
        handler stay with it until settled; any that arrive later are handed back to the
        queue unmarked.  A no-op on a stopped or cancelled subscription."""

    async def cancel(self) -> None:
        """Stop receiving and give back every delivery not settled yet (redelivered), after
        cancelling the handlers still running.  Idempotent."""


class Transport(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def declare_queue(
        self,
        name: str,
        *,
        max_priority: int = MAX_PRIORITY,
        durable: bool = True,
        auto_delete: bool = False,
    ) -> None: ...

    async def publish(self, queue: str, body: bytes, *, priority: int = 0) -> None: ...

    async def publish_many(self, messages: Sequence[tuple[str, bytes, int]]) -> None:
        """Publish ``(queue, body, priority)`` messages; returns once all are confirmed."""

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> Subscription: ...

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack every one of ``deliveries`` (settled ones are left alone) with as few frames
        as the broker allows, never settling one that is not in the list; tries them all,
        then raises a :class:`~aexec.errors.TransportError` if some could not be acked (the
        broker gives those back)."""

    async def delete_queues(self, names: Iterable[str]) -> None:
        """Delete these queues and their messages (a coordinator's reply queue it no longer
        needs; test tear-downs)."""

    async def broadcast(self, topic: str, body: bytes) -> None: ...

    async def subscribe(self, topic: str, handler: Handler) -> Subscription: ...

    async def announce(self, topic: str, body: bytes) -> None:
        """Append ``body`` to retained topic ``topic``; returns once it is stored."""

    async def follow(self, topic: str, handler: Handler) -> Subscription:
        """Hand ``handler`` every announcement retained on ``topic`` (oldest first), then
        every new one; returns once the retained ones were handled.  Deliveries are settled
        already; a handler's exception is logged and following goes on."""

    async def queue_depths(self, names: Iterable[str]) -> dict[str, int]:
        """How many messages wait in each of the queues ``names`` (delivered but unacked
        ones not counted); a queue that does not exist is left out."""

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetter]:
        """The dead letters waiting (at most ``limit``), oldest first; they stay queued."""

    async def replay_dead_letters(self, ids: Collection[str] | None = None) -> list[Replay]:
        """Publish the dead letters ``ids`` names (every one for None) back to the queue
        each came from, as they were, and take them off the dead-letter queue; ids that
        name no dead letter are ignored.  A letter whose queue is unknown or gone stays."""


class Encodable(Protocol):
    """A message as an object, which :meth:`HandsOver.hand_many` queues as it is."""

    def encode(self) -> bytes: ...


@runtime_checkable
class HandsOver(Protocol):
    """A transport whose consumers are in this process, which can carry messages as
    objects, with no encoding and no decoding on the way (:func:`handed`)."""

    async def hand_many(self, messages: Sequence[tuple[str, Encodable, int]]) -> None:
        """Queue ``(queue, message, priority)`` as :meth:`Transport.publish_many` queues
        bodies (priorities, prefetch, redelivery and stopping alike); a consumer's delivery
        carries ``message`` itself (:func:`handed`), and its ``body`` is ``message``
        encoded, when read."""


def handed(delivery: Delivery) -> object | None:
    """The message ``delivery`` carries as an object (:meth:`HandsOver.hand_many`), None
    for a delivery of bytes (a delivery of such a transport names it ``carried``)."""
    return getattr(delivery, "carried", None)


def from_url(url: str | None, *, prefix: str | None = None, secret: str | None = None) -> Transport:
    """The transport for ``url``: in-memory for None or ``memory://``, else RabbitMQ
    (``amqp://``, ``amqps://``); its module is imported only when chosen.

    ``prefix`` names every broker queue (``?prefix=`` in the URL wins over it).  With a
    ``secret`` every message is signed and verified (:mod:`aexec.transport.signed`).  The
    transport is not open yet.
    """
    transport: Transport
    if url is None or url.startswith("memory:"):
        from aexec.transport.memory import MemoryTransport

        transport = MemoryTransport()
    else:
        from aexec.transport.amqp import AmqpTransport

        parts = urlsplit(url)
        if prefix is not None and "prefix" not in dict(parse_qsl(parts.query)):
            pairs = [*parse_qsl(parts.query, keep_blank_values=True), ("prefix", prefix)]
            url = urlunsplit(parts._replace(query=urlencode(pairs)))
        transport = AmqpTransport.from_url(url)
    if secret is not None:
        from aexec.transport.signed import SignedTransport

        transport = SignedTransport(transport, secret)
    return transport
