"""The transport port: durable priority queues carrying opaque bytes.

Adapters: :mod:`aexec.transport.memory` (embedded mode, tests) and
:mod:`aexec.transport.amqp` (RabbitMQ through aio-pika), chosen by URL with
:func:`from_url`.  Both pass ``tests/contract/test_transport.py``.

Semantics every adapter keeps:

* ``publish`` returns once the message is safely queued (publisher confirm); publishing to
  a queue that does not exist raises :class:`~aexec.errors.UnroutableError` (a
  :class:`~aexec.errors.TransportError`) instead of dropping the message.
* Deliveries are at-least-once: an unacked delivery is redelivered, marked
  ``redelivered``, if its consumer goes away; ``reject(requeue=False)`` dead-letters it to
  :data:`DEAD_LETTER_QUEUE`.
* ``Subscription.stop()`` stops receiving without giving anything back: deliveries the
  handler holds stay its own until it settles them (or until ``cancel()``, which gives back
  what is still unsettled); a delivery that reaches the subscription after ``stop()`` is
  handed back to its queue *unmarked* (not redelivered), with its priority.
* Higher ``priority`` (0..max_priority) is delivered first among waiting messages.
* At most ``prefetch`` deliveries per consumer are unacked at a time.
* ``broadcast(topic, body)`` reaches every current ``subscribe(topic, ...)`` handler once
  (fire-and-forget control traffic: nothing is kept for subscribers that come later).
* ``announce(topic, body)`` appends to a *retained* topic (confirmed); ``follow(topic,
  handler)`` hands the handler every retained announcement, oldest first, then every new
  one, one at a time and in order, and returns once the retained ones were handled.
  Announcements are kept for :data:`~aexec.wire.RETAINED_MAX_AGE` seconds and at most
  :data:`~aexec.wire.RETAINED_MAX_BYTES` bytes per topic.  A follower may be handed an
  announcement again (after a reconnection): handlers are idempotent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aexec.wire import MAX_PRIORITY

DEAD_LETTER_QUEUE = "aexec.dead"


class Delivery(Protocol):
    @property
    def body(self) -> bytes: ...

    @property
    def redelivered(self) -> bool: ...

    async def ack(self) -> None: ...

    async def reject(self, requeue: bool = False) -> None: ...


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

    async def reject(self, requeue: bool = False) -> None:
        return None


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


def from_url(url: str | None, *, prefix: str | None = None) -> Transport:
    """The transport for ``url``: in-memory for None or ``memory://``, else RabbitMQ
    (``amqp://``, ``amqps://``); its module is imported only when chosen.

    ``prefix`` names every broker queue (``?prefix=`` in the URL wins over it).  The
    transport is not open yet.
    """
    if url is None or url.startswith("memory:"):
        from aexec.transport.memory import MemoryTransport

        return MemoryTransport()
    from aexec.transport.amqp import AmqpTransport

    parts = urlsplit(url)
    if prefix is not None and "prefix" not in dict(parse_qsl(parts.query)):
        query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), ("prefix", prefix)])
        url = urlunsplit(parts._replace(query=query))
    return AmqpTransport.from_url(url)
