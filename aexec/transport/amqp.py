"""RabbitMQ transport through aio-pika's robust connection.

Topology and channels::

    connection (robust: reconnects, then re-declares queues and re-registers consumers)
    ├── topology channel    declares queues (a failed declare closes only this channel)
    ├── publish channel     publisher confirms + ``on_return_raises``; ``mandatory`` publishes;
    │                       declares the broadcast exchange it publishes to
    └── one channel per subscription: a queue consumer with its own ``basic.qos`` prefetch,
                            a topic subscriber's exclusive queue bound to the exchange,
                            or a follower of a retained topic's stream

Queue names given to the port are logical; on the broker they are ``f"{prefix}.{name}"``, so
a test run isolates itself with a random prefix.  Queues are classic queues with
``x-max-priority`` (quorum queues have no priorities before RabbitMQ 4.0); messages are
persistent.

Dead letters: ``reject(requeue=False, reason=...)`` publishes the message (confirmed) to
``f"{prefix}.{DEAD_LETTER_QUEUE}"`` with headers ``x-aexec-reason``, ``x-aexec-queue`` (the
logical queue it came from) and ``x-aexec-dead-at`` (milliseconds since the epoch) and a
``message_id``, then acks it.  That queue is bounded by its arguments (``x-max-length``,
``x-max-length-bytes``, ``x-message-ttl``, ``x-overflow: drop-head``).  Other queues still
carry the broker-side dead-letter arguments of earlier versions (to the unbounded
``f"{prefix}.{LEGACY_DEAD_LETTER_QUEUE}"``), because RabbitMQ refuses to redeclare an
existing queue with other arguments; the broker itself dead-letters nothing in aexec's
normal operation, and the listing and replay read that legacy queue too where it exists
(its messages described by RabbitMQ's ``x-death`` header).

Broadcasts go through the direct exchange ``f"{prefix}.broadcast"`` with the topic as
routing key, to one exclusive auto-acked queue per subscriber (fire and forget: a broadcast
nobody listens to is dropped).

A retained topic is a stream queue (``x-queue-type: stream``, retention by ``x-max-age``
and ``x-max-length-bytes``) that followers read from its first offset; a follower knows it
has caught up when it reads back a marker it published itself (a message whose
:data:`MARKER_HEADER` no handler sees).

Stopping a consumer (``Subscription.stop``) sends ``basic.cancel`` and keeps the channel
open, so the deliveries its handlers hold can still be acked; one that arrives between the
cancel and its ``cancel-ok`` is published again with its priority (confirmed) and acked,
so that it goes back unmarked.

aio-pika and aiormq exceptions are translated to :class:`~aexec.errors.TransportError` at
this boundary.  Credentials never appear in messages or logs: the broker is named as
``amqp://host:port/vhost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Sequence,
)
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit
from uuid import uuid4

import aio_pika
import aiormq.exceptions
import pamqp.exceptions
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
)
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic
from yarl import URL

from aexec.errors import ConfigError, PublishError, TransportError, UnroutableError
from aexec.transport import (
    DEAD_LETTER_LIMITS,
    DEAD_LETTER_QUEUE,
    LEGACY_DEAD_LETTER_QUEUE,
    Announcement,
    DeadLetter,
    DeadLetterLimits,
    Delivery,
    Handler,
    Replay,
    ack_each,
    amqp_batch,
    retained_queue,
)
from aexec.wire import (
    MAX_PRIORITY,
    RETAINED_MAX_AGE,
    RETAINED_MAX_BYTES,
    RETAINED_SEGMENT_BYTES,
)

__all__ = ["AmqpDelivery", "AmqpFollower", "AmqpSubscription", "AmqpTransport", "from_url"]

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "aexec"
DEFAULT_CONNECT_TIMEOUT = 10.0
# aio-pika waits 5 s between reconnection attempts by default; a worker should be back sooner.
DEFAULT_RECONNECT_INTERVAL = 1.0

# What aio-pika, aiormq and the socket raise when the broker misbehaves or goes away.
# (ChannelInvalidStateError is a RuntimeError; TimeoutError is an OSError.)
_BROKER_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    pamqp.exceptions.PAMQPException,
    OSError,
)

_AMQP_PRIORITY_LIMIT = 255
_REASON, _QUEUE, _DEAD_AT = "x-aexec-reason", "x-aexec-queue", "x-aexec-dead-at"

MARKER_HEADER = "x-aexec-marker"
"""Header of the markers followers publish on a retained topic to know they caught up."""

FOLLOW_TIMEOUT = 60.0
"""How long ``follow`` waits to read back its marker (the whole retained log before it)."""

_FOLLOW_PREFETCH = 256
#: How often, and after what first pause (doubling), consuming a just-declared stream is tried.
_FOLLOW_ATTEMPTS = 6
_FOLLOW_RETRY = 0.1

_T = TypeVar("_T")


def from_url(url: str) -> AmqpTransport:
    """Same as :meth:`AmqpTransport.from_url`."""
    return AmqpTransport.from_url(url)


@dataclass(frozen=True, slots=True)
class _QueueSpec:
    """How a queue was declared, so a consumer channel can re-declare it identically."""

    name: str  # on the broker, prefixed
    durable: bool
    auto_delete: bool
    arguments: dict[str, Any]


class _Unsettled:
    """The deliveries of one consumer not settled yet, by delivery tag, on the channel that
    delivered the latest one: what a ``basic.ack`` with ``multiple`` may cover.

    RabbitMQ numbers a channel's deliveries 1, 2, 3...; an ack with ``multiple`` settles
    every unsettled one up to its tag.  Tags are noted as aiormq hands the messages over (in
    delivery order: one task a delivery, started in order, notes its tag first), so the dict
    keeps them in ascending order.  A restored channel numbers from 1 again, and the
    deliveries of the closed one are the broker's again: they are forgotten."""

    __slots__ = ("_channel", "_tags")

    def __init__(self) -> None:
        self._channel: object = None
        self._tags: dict[int, None] = {}

    @property
    def channel(self) -> object:
        """The channel whose deliveries it notes (the latest one's)."""
        return self._channel

    def add(self, message: DeliveredMessage) -> None:
        channel = _channel(message)
        if channel is not self._channel:
            self._channel = channel
            self._tags.clear()
        if message.delivery_tag is not None:
            self._tags[message.delivery_tag] = None

    def discard(self, message: DeliveredMessage) -> None:
        if _channel(message) is self._channel and message.delivery_tag is not None:
            self._tags.pop(message.delivery_tag, None)

    def cover(self, messages: list[DeliveredMessage]) -> int | None:
        """The highest tag an ack with ``multiple`` may carry to settle (some of)
        ``messages`` and nothing else — the longest run of the oldest unsettled tags that
        are all theirs — or None; the tags it covers are forgotten."""
        wanted = {m.delivery_tag for m in messages if _channel(m) is self._channel}
        highest = None
        for tag in self._tags:
            if tag not in wanted:
                break
            highest = tag
        if highest is not None:
            for tag in list(self._tags):
                if tag > highest:
                    break
                del self._tags[tag]
        return highest


class AmqpDelivery:
    """One message handed to a handler (aiormq's, as delivered: no aio-pika message is built
    for it).  Settling it twice is a no-op, as in memory."""

    __slots__ = ("_message", "_queue", "_transport", "_unsettled", "settled")

    def __init__(
        self,
        message: DeliveredMessage,
        transport: AmqpTransport | None = None,
        queue: str | None = None,
        unsettled: _Unsettled | None = None,
        *,
        settled: bool = False,
    ) -> None:
        self._message = message
        self._transport = transport  # dead-letters through it (None: a broadcast)
        self._queue = queue  # the logical queue it came from
        self._unsettled = unsettled  # its consumer's (None: nothing to ack many with)
        # Here, or by an ack with ``multiple``; an auto-acked delivery is settled already.
        self.settled = settled

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def redelivered(self) -> bool:
        return bool(self._message.redelivered)

    def _settling(self) -> bool:
        """Claim the settling of this delivery: False if it is settled already."""
        if self.settled:
            return False
        self.settled = True
        if self._unsettled is not None:
            self._unsettled.discard(self._message)
        return True

    async def ack(self) -> None:
        if not self._settling():
            return
        try:
            await _settle(self._message, ack=True)
        except _BROKER_ERRORS as exc:
            raise TransportError(
                f"cannot ack: {_reason(exc)} (the broker will redeliver the message)"
            ) from exc

    async def reject(self, requeue: bool = False, *, reason: str | None = None) -> None:
        message = self._message
        if self.settled:
            return
        if not requeue and self._transport is not None and self._queue is not None:
            try:
                await self._transport._dead_letter(
                    self._queue, message.body, _priority(message), reason or "rejected"
                )
            except TransportError as exc:
                raise TransportError(
                    f"cannot dead-letter: {exc} (the broker will redeliver the message)"
                ) from exc
            await self.ack()
            return
        if not self._settling():
            return
        try:
            await _settle(message, ack=False, requeue=requeue)
        except _BROKER_ERRORS as exc:
            raise TransportError(
                f"cannot reject: {_reason(exc)} (the broker will redeliver the message)"
            ) from exc


Republish = Callable[[bytes, int], Awaitable[None]]
"""Publish ``(body, priority)`` again to the queue a subscription consumes."""


class AmqpSubscription:
    """A consumer on its own channel, owning the tasks that run its handler.

    The consumer is registered on the robust channel's aiormq channel directly, with a
    callback that takes aiormq's delivered message as it is: no aio-pika message, and no
    task of aio-pika's between aiormq's task for the delivery and the handler's.  So this
    subscription re-registers it itself, with the same tag: when the robust channel is
    reopened (after a reconnect, or after the broker closed the channel; the channel's
    prefetch and the queue's declaration and bindings are restored by then), and, a reconnect
    interval later, when the broker cancels it (its queue deleted, say), re-declaring the
    queue first, as aio-pika's robust queue did.

    Handlers run in tasks of this subscription, not in aiormq's consumer tasks, so a
    connection loss does not cancel a running handler (its ack then fails with
    :class:`~aexec.errors.TransportError`, and the broker redelivers the message).
    ``stop()`` cancels the consumer on the broker and keeps the channel, so held deliveries
    can still be settled; ``cancel()`` cancels running handlers and closes the channel;
    RabbitMQ then requeues every unacked delivery, marked redelivered.
    """

    def __init__(
        self,
        queue: str | None,
        label: str,
        handler: Handler,
        channel: AbstractRobustChannel,
        owner: set[AmqpSubscription],
        transport: AmqpTransport | None = None,
        republish: Republish | None = None,
        ready_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.queue = queue  # logical queue consumed; None for a topic subscriber
        self._transport = transport
        self._label = label
        self._handler = handler
        self._channel = channel
        self._owner = owner
        self._republish = republish
        self._ready_timeout = ready_timeout
        self._running: set[asyncio.Task[None]] = set()
        self._handing_back: set[asyncio.Task[None]] = set()
        self._recovering: set[asyncio.Task[None]] = set()
        self._active = True
        self._stopped = False
        self._source: AbstractRobustQueue | None = None  # the queue consumed
        self._no_ack = queue is None  # a topic's deliveries are auto-acked
        self._tag: str | None = None  # the broker consumer's tag, once consuming
        # What an ack with ``multiple`` may cover (a topic's deliveries are auto-acked).
        self._unsettled = _Unsettled() if queue is not None else None

    async def start(self, source: AbstractRobustQueue) -> None:
        """Consume ``source`` (declared on this subscription's channel)."""
        self._source = source
        underlay = cast(aiormq.Channel, await self._channel.get_underlay_channel())
        await self._register(underlay)
        self._channel.reopen_callbacks.add(self._reopened)

    async def _register(self, underlay: aiormq.Channel) -> None:
        assert self._source is not None
        underlay.on_consumer_cancel_callbacks.add(self._cancelled_by_broker)
        ok = await underlay.basic_consume(
            self._source.name, self._on_delivery, no_ack=self._no_ack, consumer_tag=self._tag
        )
        self._tag = ok.consumer_tag

    async def _reopened(self, _: object) -> None:
        """The robust channel's reopen callback: consume again on the restored channel."""
        if self._stopped or not self._active or self._tag is None:
            return
        try:
            underlay = cast(aiormq.Channel, await self._channel.get_underlay_channel())
            if self._tag not in underlay.consumers:
                await self._register(underlay)
        except _BROKER_ERRORS as exc:  # aio-pika drops a reopen callback's failure: retry
            logger.info("consuming %s on the restored channel: %s", self._label, _reason(exc))
            self._recover()

    def _cancelled_by_broker(self, frame: Basic.Cancel) -> None:
        if frame.consumer_tag != self._tag or self._stopped or not self._active:
            return
        logger.warning("the broker cancelled the consumer of %s: consuming again", self._label)
        self._recover()

    def _recover(self) -> None:
        if not self._recovering:  # one at a time: two would register the tag twice
            self._start(self._reconsume(), self._recovering)

    async def _reconsume(self) -> None:
        """After the broker cancelled the consumer: declare its queue again (and bind it),
        then consume, every reconnect interval until it works or the subscription stops."""
        assert self._source is not None
        while not self._stopped and self._active:
            await asyncio.sleep(DEFAULT_RECONNECT_INTERVAL)
            if self._stopped or not self._active:
                return
            try:
                await self._ready()
                underlay = cast(aiormq.Channel, await self._channel.get_underlay_channel())
                if self._tag in underlay.consumers:
                    return  # consuming again already (the channel was reopened)
                await self._source.restore()  # declares, binds; it has no consumers itself
                await self._register(underlay)
                return
            except (TimeoutError, *_BROKER_ERRORS) as exc:
                logger.info("consuming %s again: %s", self._label, _reason(exc))

    async def _on_delivery(self, message: DeliveredMessage) -> None:
        """aiormq's consumer callback, in aiormq's task for the delivery (one each, started
        in delivery order).  Handlers start in delivery order, in tasks of their own."""
        if self._unsettled is not None:
            self._unsettled.add(message)  # first: before any later message is handled
        if not self._active:
            return  # left unacked: requeued when the channel closes
        if self._stopped:
            self._start(self._hand_back(message), self._handing_back)
            return
        self._start(self._handle(message), self._running)

    def _start(self, coro: Coroutine[Any, Any, None], tasks: set[asyncio.Task[None]]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _hand_back(self, message: DeliveredMessage) -> None:
        """Give back a delivery the handler never saw.  One that is marked redelivered
        already is requeued (it keeps its mark); any other is published again with its
        priority, then acked, so that it is not mistaken for one a crashed consumer held."""
        if self._no_ack:
            return  # auto-acked: nothing to give back
        if self._unsettled is not None:
            self._unsettled.discard(message)
        try:
            if self._republish is None or message.redelivered:
                await _settle(message, ack=False, requeue=True)
                return
            try:
                await self._republish(message.body, _priority(message))
            except TransportError as exc:
                logger.warning("cannot hand a delivery back to %s: %s", self._label, exc)
                await _settle(message, ack=False, requeue=True)  # marked, but not lost
                return
            await _settle(message, ack=True)
        except _BROKER_ERRORS as exc:  # the channel died: the broker requeues it anyway
            logger.debug("handing a delivery back to %s: %s", self._label, _reason(exc))

    async def _handle(self, message: DeliveredMessage) -> None:
        if self._stopped:  # stopped after it arrived, before its handler started
            # In a task of its own: cancel() cancels handlers, not hand-backs.
            self._start(self._hand_back(message), self._handing_back)
            return
        delivery = AmqpDelivery(
            message, self._transport, self.queue, self._unsettled, settled=self._no_ack
        )
        try:
            await self._handler(delivery)
        except Exception as failure:
            if delivery.settled:  # by the handler, or auto-acked
                logger.exception("handler for %s failed", self._label)
                return
            logger.exception("handler for %s failed; dead-lettering its delivery", self._label)
            reason = f"handler failed: {_reason(failure)}"
            try:
                await delivery.reject(requeue=False, reason=reason)
            except TransportError as exc:
                logger.warning("cannot dead-letter the delivery: %s", exc)

    async def stop(self) -> None:
        if self._stopped or not self._active:
            return
        self._stopped = True
        if self.queue is None:  # a topic subscriber holds nothing: stopping is cancelling
            await self.cancel()
            return
        if self._tag is None:
            return
        try:
            await self._ready()
            underlay = await self._channel.get_underlay_channel()
            await underlay.basic_cancel(self._tag)
        except (TimeoutError, TransportError, *_BROKER_ERRORS) as exc:
            # The channel is gone: the broker has requeued what it held, and a restored
            # channel does not consume for a stopped subscription.
            logger.debug("stopping %s: %s", self._label, exc)

    async def _ready(self) -> None:
        async with asyncio.timeout(self._ready_timeout):
            await self._channel.ready()

    async def cancel(self) -> None:
        """Cancel the running handlers, let the deliveries being handed back finish going
        back (each is bounded by the connect timeout), and close the channel."""
        if not self._active:
            return
        self._active = False
        self._owner.discard(self)
        self._channel.reopen_callbacks.discard(self._reopened)
        current = asyncio.current_task()
        running = [task for task in self._running | self._recovering if task is not current]
        for task in running:
            task.cancel()
        try:
            if running:
                await asyncio.wait(running)
            if self._handing_back:  # short, and not to be cut in half (a duplicate)
                await asyncio.wait(list(self._handing_back))
        finally:
            try:
                await self._channel.close()
            except _BROKER_ERRORS as exc:
                logger.debug("closing the channel of %s: %s", self._label, _reason(exc))


class AmqpFollower:
    """Follows a retained topic's stream on its own channel: one task hands the handler the
    announcements one at a time, in stream order, and acks them (a stream's acks only give
    credit back).  After a reconnection the robust channel consumes from the first offset
    again, so announcements may be handed twice."""

    def __init__(
        self,
        topic: str,
        handler: Handler,
        channel: AbstractRobustChannel,
        owner: set[AmqpFollower],
    ) -> None:
        self._topic = topic
        self._handler = handler
        self._channel = channel
        self._owner = owner
        self._items: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._markers: dict[str, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(
            self._pump(), name=f"aexec-follower-{topic}"
        )

    def expect(self, token: str) -> asyncio.Future[None]:
        """A future resolved once the marker ``token`` has been read back."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._markers[token] = future
        return future

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self._items.put_nowait(message)

    async def _pump(self) -> None:
        while True:
            message = await self._items.get()
            marker = (message.headers or {}).get(MARKER_HEADER)
            if marker is None:
                try:
                    await self._handler(Announcement(message.body))
                except Exception:
                    logger.exception("a follower of %r failed on an announcement", self._topic)
            else:
                waiter = self._markers.pop(str(marker), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            try:
                await message.ack()
            except _BROKER_ERRORS as exc:  # the channel died: it reconsumes from the start
                logger.debug("following %r: %s", self._topic, _reason(exc))

    async def stop(self) -> None:
        await self.cancel()

    async def cancel(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._owner.discard(self)
        try:
            if task is not asyncio.current_task():
                task.cancel()
                await asyncio.wait([task])
        finally:
            try:
                await self._channel.close()
            except _BROKER_ERRORS as exc:
                logger.debug("closing the channel following %r: %s", self._topic, _reason(exc))


class AmqpTransport:
    """The transport port over RabbitMQ.  One instance holds one robust connection."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        dead_letters: DeadLetterLimits = DEAD_LETTER_LIMITS,
    ) -> None:
        self._url = url
        self._dead_letter_limits = dead_letters
        self._display = _display(url)
        self._prefix = prefix
        self._connect_timeout = connect_timeout
        self._connection: AbstractRobustConnection | None = None
        self._topology: AbstractRobustChannel | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._queues: dict[str, _QueueSpec] = {}
        self._subscriptions: set[AmqpSubscription] = set()
        self._followers: set[AmqpFollower] = set()
        # Message ids of batched publishes (see amqp_batch): unique on a channel, and with
        # a random prefix unique across processes too, as aiormq's random ones are.
        self._id_prefix = uuid4().hex[:12]
        self._message_ids = itertools.count(1)

    @classmethod
    def from_url(cls, url: str) -> AmqpTransport:
        """An :class:`AmqpTransport` for ``amqp://`` or ``amqps://`` URLs.

        Besides aio-pika's own query parameters (``heartbeat``, ``name``, ``reconnect_interval``,
        TLS options), two are read here and removed from the URL: ``prefix`` (default
        ``aexec``) and ``connect_timeout`` (float seconds, default 10).
        """
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            raise ConfigError(
                f"not a RabbitMQ URL: {_display(url)!r} (expected amqp:// or amqps://)"
            )
        query = parse_qsl(parts.query, keep_blank_values=True)
        options = dict(query)
        rest = [(key, value) for key, value in query if key not in ("prefix", "connect_timeout")]
        prefix = options.get("prefix", DEFAULT_PREFIX)
        try:
            connect_timeout = float(options.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT))
        except ValueError:
            raise ConfigError(
                f"connect_timeout in {_display(url)!r} must be a number of seconds"
            ) from None
        if not prefix:
            raise ConfigError(f"prefix in {_display(url)!r} must not be empty")
        if connect_timeout <= 0:
            raise ConfigError(f"connect_timeout in {_display(url)!r} must be > 0")
        clean = parts._replace(query=urlencode(rest)).geturl()
        return cls(clean, prefix=prefix, connect_timeout=connect_timeout)

    def __repr__(self) -> str:
        return f"AmqpTransport({self._display!r}, prefix={self._prefix!r})"

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def connect_timeout(self) -> float:
        return self._connect_timeout

    def broker_name(self, queue: str) -> str:
        """The name of logical queue ``queue`` on the broker."""
        return f"{self._prefix}.{queue}"

    @property
    def broadcast_exchange(self) -> str:
        """The name of the exchange that carries broadcasts."""
        return f"{self._prefix}.broadcast"

    async def open(self) -> None:
        if self._connection is not None:
            return
        connection = await self._connect()
        try:
            topology = await self._open_channel(connection, confirms=False)
            publisher = await self._open_channel(connection, confirms=True)
            # Declared on the publish channel, so restoring that channel alone restores it.
            self._exchange = await publisher.declare_exchange(
                self.broadcast_exchange, aio_pika.ExchangeType.DIRECT, durable=True
            )
        except _BROKER_ERRORS as exc:
            await connection.close()
            raise TransportError(
                f"cannot declare exchange {self.broadcast_exchange!r}: {_reason(exc)}"
            ) from exc
        except BaseException:
            await connection.close()
            raise
        self._connection, self._topology, self._publisher = connection, topology, publisher
        try:
            await self.declare_queue(DEAD_LETTER_QUEUE, max_priority=0)
        except BaseException:
            await self.close()
            raise
        logger.info("connected to RabbitMQ at %s (prefix %r)", self._display, self._prefix)

    async def close(self) -> None:
        connection = self._connection
        if connection is None:
            return
        try:
            for follower in list(self._followers):
                await follower.cancel()
            for subscription in list(self._subscriptions):
                await subscription.cancel()
        finally:
            self._connection = self._topology = self._publisher = self._exchange = None
            self._queues.clear()
            try:
                await connection.close()
            except _BROKER_ERRORS as exc:
                logger.debug("closing the connection to %s: %s", self._display, _reason(exc))

    async def declare_queue(
        self,
        name: str,
        *,
        max_priority: int = MAX_PRIORITY,
        durable: bool = True,
        auto_delete: bool = False,
    ) -> None:
        channel = self._require(self._topology)
        if name in self._queues:
            return
        arguments: dict[str, Any] = {}
        if name == DEAD_LETTER_QUEUE:
            limits = self._dead_letter_limits
            arguments["x-max-length"] = limits.max_length
            arguments["x-max-length-bytes"] = limits.max_bytes
            arguments["x-message-ttl"] = round(limits.ttl * 1000)
            arguments["x-overflow"] = "drop-head"
        elif name != LEGACY_DEAD_LETTER_QUEUE:
            # What queues were declared with before the bounded dead-letter queue: existing
            # queues can only be declared again with the same arguments.
            arguments["x-dead-letter-exchange"] = ""
            arguments["x-dead-letter-routing-key"] = self.broker_name(LEGACY_DEAD_LETTER_QUEUE)
        if max_priority > 0:
            arguments["x-max-priority"] = max_priority
        spec = _QueueSpec(self.broker_name(name), durable, auto_delete, arguments)
        try:
            await self._ready(channel)
            # Declared on a robust channel, the queue is re-declared after a reconnect.
            await channel.declare_queue(
                spec.name, durable=durable, auto_delete=auto_delete, arguments=arguments
            )
        except _BROKER_ERRORS as exc:
            raise TransportError(f"cannot declare queue {spec.name!r}: {_reason(exc)}") from exc
        self._queues[name] = spec

    async def publish(self, queue: str, body: bytes, *, priority: int = 0) -> None:
        properties = Basic.Properties(
            delivery_mode=2, priority=min(max(priority, 0), _AMQP_PRIORITY_LIMIT)
        )
        await self._publish(queue, body, properties)

    async def _publish(self, queue: str, body: bytes, properties: Basic.Properties) -> None:
        """Publish to logical queue ``queue`` (mandatory, confirmed)."""
        channel = self._require(self._publisher)
        routing_key = self.broker_name(queue)
        # Straight to aiormq: what aio-pika's Exchange.publish does, without building an
        # aio_pika.Message per publish (a measured 15-20% of a confirmed publish's CPU).
        # ``wait=False``: the broker's confirm is what is awaited, not the frame reaching the
        # socket first.  Waiting for that drain held the channel's publish lock across a
        # wake-up of the writer task, so concurrent publishes (a layer of steps, a worker's
        # completions) went out one writer round trip after another.
        try:
            if channel.is_closed:  # reconnecting: wait (bounded) for the channel to come back
                await self._ready(channel)
            # aiormq's abstract channel does not declare ``wait``; its Channel has it.
            underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
            await underlay.basic_publish(
                body,
                exchange="",
                routing_key=routing_key,
                properties=properties,
                mandatory=True,
                wait=False,
            )
        except aiormq.exceptions.PublishError as exc:
            raise UnroutableError(
                f"no queue named {queue!r} ({routing_key!r}): the message was not routed"
            ) from exc
        except aiormq.exceptions.DeliveryError as exc:
            raise TransportError(f"RabbitMQ refused a message for {routing_key!r}") from exc
        except _BROKER_ERRORS as exc:
            raise TransportError(f"cannot publish to {routing_key!r}: {_reason(exc)}") from exc

    async def publish_many(self, messages: Sequence[tuple[str, bytes, int]]) -> None:
        """Publish in one socket write (:mod:`aexec.transport.amqp_batch`), the confirms
        awaited together: the broker confirms the batch in about one round trip."""
        if len(messages) == 1:
            queue, body, priority = messages[0]
            await self.publish(queue, body, priority=priority)
            return
        if not messages:
            return
        channel = self._require(self._publisher)
        try:
            if channel.is_closed:  # reconnecting: wait (bounded) for the channel to come back
                await self._ready(channel)
            underlay = await channel.get_underlay_channel()
        except (TransportError, *_BROKER_ERRORS) as exc:
            raise PublishError(
                f"{len(messages)} of {len(messages)} messages were not confirmed: "
                f"{exc if isinstance(exc, TransportError) else _reason(exc)}",
                list(messages),
            ) from exc
        if not amqp_batch.batchable(underlay):
            results = await asyncio.gather(
                *(self.publish(q, b, priority=p) for q, b, p in messages), return_exceptions=True
            )
        else:
            results = await self._publish_batch(cast(aiormq.Channel, underlay), messages)
        failed = [(m, r) for m, r in zip(messages, results, strict=True) if r is not None]
        for _, result in failed:
            if not isinstance(result, TransportError):
                raise result  # not the broker's doing: a bug, or cancellation
        if failed:
            raise PublishError(
                f"{len(failed)} of {len(messages)} messages were not confirmed: {failed[0][1]}",
                [m for m, _ in failed],
            )

    async def _publish_batch(
        self, underlay: aiormq.Channel, messages: Sequence[tuple[str, bytes, int]]
    ) -> list[BaseException | None]:
        """Publish ``messages`` in one write; each one's outcome: None (confirmed) or the
        error :meth:`publish` would have raised for it."""
        publishes = [
            (
                self.broker_name(queue),
                body,
                Basic.Properties(
                    delivery_mode=2,
                    priority=min(max(priority, 0), _AMQP_PRIORITY_LIMIT),
                    message_id=f"{self._id_prefix}.{next(self._message_ids)}",
                ),
            )
            for queue, body, priority in messages
        ]
        try:
            confirmations = await amqp_batch.put_publishes(underlay, publishes)
        except _BROKER_ERRORS as exc:
            unsent = TransportError(f"cannot publish: {_reason(exc)}")
            unsent.__cause__ = exc
            return [unsent] * len(messages)
        outcomes = await amqp_batch.outcomes(confirmations)
        results: list[BaseException | None] = []
        for (queue, _, _), (routing_key, _, _), outcome in zip(
            messages, publishes, outcomes, strict=True
        ):
            if not isinstance(outcome, BaseException):
                results.append(None)
                continue
            if isinstance(outcome, aiormq.exceptions.PublishError):
                error: BaseException = UnroutableError(
                    f"no queue named {queue!r} ({routing_key!r}): the message was not routed"
                )
            elif isinstance(outcome, aiormq.exceptions.DeliveryError):
                error = TransportError(f"RabbitMQ refused a message for {routing_key!r}")
            elif isinstance(outcome, _BROKER_ERRORS):
                error = TransportError(f"cannot publish to {routing_key!r}: {_reason(outcome)}")
            else:
                results.append(outcome)  # cancellation, or a bug: raised as it is
                continue
            error.__cause__ = outcome
            results.append(error)
        return results

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """One ``basic.ack`` with ``multiple`` per consumer for its oldest unsettled
        deliveries when they are all in ``deliveries`` (see :class:`_Unsettled`); one ack
        each for the others."""
        groups: dict[int, tuple[_Unsettled, list[AmqpDelivery]]] = {}
        alone: list[Delivery] = []
        for delivery in deliveries:
            if not isinstance(delivery, AmqpDelivery) or delivery._unsettled is None:
                alone.append(delivery)
            elif not delivery.settled:
                unsettled = delivery._unsettled
                groups.setdefault(id(unsettled), (unsettled, []))[1].append(delivery)
        failure: TransportError | None = None
        for unsettled, group in groups.values():
            highest = unsettled.cover([d._message for d in group])
            if highest is None:
                alone.extend(group)
                continue
            current = unsettled.channel  # a restored channel numbers its deliveries anew
            covered: list[AmqpDelivery] = []
            for delivery in group:
                if _tag(delivery) <= highest and _channel(delivery._message) is current:
                    covered.append(delivery)
                else:
                    alone.append(delivery)
            for delivery in covered:
                delivery.settled = True
            try:
                channel = max(covered, key=_tag)._message.channel
                # Not waiting for the frame to drain to the socket: that is no receipt
                # either (an ack has none; one lost redelivers its messages) and cost the
                # caller a wake-up or two of the writer task per ack.
                await channel.basic_ack(delivery_tag=highest, multiple=True, wait=False)
            except _BROKER_ERRORS as exc:
                failure = failure or TransportError(
                    f"cannot ack: {_reason(exc)} (the broker will redeliver the messages)"
                )
        try:
            await ack_each(alone)
        except TransportError as exc:
            failure = failure or exc
        if failure is not None:
            raise failure

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> AmqpSubscription:
        connection = self._require(self._connection)
        spec = self._queues.get(queue)
        channel = await self._open_channel(connection, confirms=False)

        async def republish(body: bytes, priority: int) -> None:
            await self.publish(queue, body, priority=priority)

        subscription = AmqpSubscription(
            queue,
            f"queue {queue!r}",
            handler,
            channel,
            self._subscriptions,
            self,
            republish,
            self._connect_timeout,
        )
        try:
            await channel.set_qos(prefetch_count=max(1, prefetch))
            amqp_queue = await self._consumer_queue(channel, queue, spec)
            # The robust channel restores the prefetch and the queue after a reconnect; the
            # subscription then consumes again with the same tag.
            await subscription.start(amqp_queue)
        except BaseException as exc:
            await self._abandon(channel)
            if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
                raise TransportError(f"cannot consume from undeclared queue {queue!r}") from exc
            if isinstance(exc, _BROKER_ERRORS):
                raise TransportError(f"cannot consume from {queue!r}: {_reason(exc)}") from exc
            raise
        self._subscriptions.add(subscription)
        return subscription

    async def broadcast(self, topic: str, body: bytes) -> None:
        channel = self._require(self._publisher)
        exchange = self._require(self._exchange)
        try:
            if channel.is_closed:
                await self._ready(channel)
            # Not mandatory: a broadcast nobody subscribes to is dropped, not an error.
            await exchange.publish(aio_pika.Message(body), topic, mandatory=False)
        except _BROKER_ERRORS as exc:
            raise TransportError(f"cannot broadcast on {topic!r}: {_reason(exc)}") from exc

    async def subscribe(self, topic: str, handler: Handler) -> AmqpSubscription:
        """Every broadcast on ``topic`` reaches ``handler`` once, as an auto-acked delivery."""
        connection = self._require(self._connection)
        exchange = self.broadcast_exchange
        channel = await self._open_channel(connection, confirms=False)
        subscription = AmqpSubscription(
            None, f"broadcasts on {topic!r}", handler, channel, self._subscriptions
        )
        # Named here (not by the server) so that the robust channel re-declares the same
        # queue, re-binds it and re-registers the consumer after a reconnect.
        name = f"{exchange}.{topic}.{uuid4().hex[:12]}"
        try:
            await self._ready(channel)
            queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
            await queue.bind(exchange, routing_key=topic)
            await subscription.start(queue)
        except BaseException as exc:
            await self._abandon(channel)
            if isinstance(exc, _BROKER_ERRORS):
                raise TransportError(
                    f"cannot subscribe to broadcasts on {topic!r}: {_reason(exc)}"
                ) from exc
            raise
        self._subscriptions.add(subscription)
        return subscription

    async def queue_depths(self, names: Iterable[str]) -> dict[str, int]:
        """Read with passive declares, on a channel of their own: RabbitMQ closes a channel
        that declares a missing queue passively, so each such queue costs a new one."""
        connection = self._require(self._connection)
        depths: dict[str, int] = {}
        channel = None
        try:
            for name in names:
                if channel is None or channel.is_closed:
                    channel = await self._open_channel(connection, confirms=False)
                    await self._ready(channel)
                try:
                    queue = await channel.declare_queue(self.broker_name(name), passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    channel = None  # (the broker closed the channel)
                    continue
                except _BROKER_ERRORS as exc:
                    raise TransportError(f"cannot read queue {name!r}: {_reason(exc)}") from exc
                depths[name] = queue.declaration_result.message_count or 0
        finally:
            if channel is not None and not channel.is_closed:
                await channel.close()
        return depths

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetter]:
        """Fetched unacked on a channel of their own, which is then closed: RabbitMQ puts
        every one back where it was."""
        found: list[DeadLetter] = []
        for queue in (LEGACY_DEAD_LETTER_QUEUE, DEAD_LETTER_QUEUE):
            async with self._dead_letter_reader(queue) as fetch:
                while limit is None or len(found) < limit:
                    message = await fetch()
                    if message is None:
                        break
                    found.append(self._letter(message))
        found.sort(key=lambda letter: letter.dead_at or 0.0)
        return found

    async def replay_dead_letters(self, ids: Collection[str] | None = None) -> list[Replay]:
        done: list[Replay] = []
        for queue in (LEGACY_DEAD_LETTER_QUEUE, DEAD_LETTER_QUEUE):
            async with self._dead_letter_reader(queue) as fetch:
                while (message := await fetch()) is not None:
                    letter = self._letter(message)
                    if ids is not None and letter.id not in ids:
                        continue
                    if letter.queue is None:
                        done.append(Replay(letter, "the queue it came from is unknown"))
                        continue
                    try:
                        await self.publish(letter.queue, letter.body, priority=letter.priority)
                        await message.ack()
                    except (TransportError, *_BROKER_ERRORS) as exc:
                        done.append(Replay(letter, str(exc)))
                        continue
                    done.append(Replay(letter))
        return done

    @contextlib.asynccontextmanager
    async def _dead_letter_reader(
        self, queue: str
    ) -> AsyncIterator[Callable[[], Awaitable[AbstractIncomingMessage | None]]]:
        """A function fetching the messages waiting in dead-letter queue ``queue`` one by
        one (None at the end, or at once if the queue does not exist), left unacked:
        whatever the caller does not ack goes back to its place when the channel closes at
        the end of the block."""
        connection = self._require(self._connection)
        channel = await self._open_channel(connection, confirms=False)
        try:
            try:
                await self._ready(channel)
                amqp_queue = await channel.declare_queue(self.broker_name(queue), passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                amqp_queue = None  # (the broker closed the channel)
            except _BROKER_ERRORS as exc:
                raise TransportError(f"cannot read {queue!r}: {_reason(exc)}") from exc
            waiting = 0 if amqp_queue is None else amqp_queue.declaration_result.message_count

            async def fetch() -> AbstractIncomingMessage | None:
                nonlocal waiting
                if amqp_queue is None or not waiting:
                    return None
                waiting -= 1
                try:
                    return await amqp_queue.get(
                        no_ack=False, fail=False, timeout=self._connect_timeout
                    )
                except (TimeoutError, *_BROKER_ERRORS) as exc:
                    raise TransportError(f"cannot read {queue!r}: {_reason(exc)}") from exc

            yield fetch
        finally:
            await self._abandon(channel)

    def _letter(self, message: AbstractIncomingMessage) -> DeadLetter:
        """What a message of a dead-letter queue says of itself: aexec's headers, or else
        RabbitMQ's ``x-death`` record (a broker-side dead letter)."""
        headers: dict[str, Any] = dict(message.headers or {})
        priority = message.priority or 0
        if _REASON in headers:
            dead_at = headers.get(_DEAD_AT)
            return DeadLetter(
                message.message_id or _digest(message.body, str(dead_at)),
                _text(headers.get(_QUEUE)),
                str(headers[_REASON]),
                dead_at / 1000 if isinstance(dead_at, int | float) else None,
                message.body,
                priority,
            )
        deaths = headers.get("x-death")
        death: dict[str, Any] = deaths[0] if isinstance(deaths, list) and deaths else {}
        when = death.get("time")
        dead_at = when.timestamp() if isinstance(when, datetime) else None
        source = _text(death.get("queue"))
        queue = None
        if source is not None and source.startswith(self._prefix + "."):
            queue = source[len(self._prefix) + 1 :]
        return DeadLetter(
            message.message_id or _digest(message.body, repr(when)),
            queue,
            str(death.get("reason", "dead-lettered by the broker")),
            dead_at,
            message.body,
            priority,
        )

    async def _dead_letter(self, queue: str, body: bytes, priority: int, reason: str) -> None:
        """Publish ``body`` (taken from ``queue``) to the dead-letter queue with why, whence
        and when; returns once RabbitMQ confirmed it."""
        channel = self._require(self._publisher)
        headers: dict[str, Any] = {
            _REASON: reason[:1000],
            _QUEUE: queue,
            _DEAD_AT: round(time.time() * 1000),
        }
        properties = Basic.Properties(
            delivery_mode=2,
            priority=min(max(priority, 0), _AMQP_PRIORITY_LIMIT),
            headers=headers,
            message_id=uuid4().hex[:12],
        )
        routing_key = self.broker_name(DEAD_LETTER_QUEUE)
        try:
            if channel.is_closed:
                await self._ready(channel)
            underlay = await channel.get_underlay_channel()
            await underlay.basic_publish(
                body, exchange="", routing_key=routing_key, properties=properties, mandatory=True
            )
        except _BROKER_ERRORS as exc:
            raise TransportError(f"cannot publish to {routing_key!r}: {_reason(exc)}") from exc

    async def announce(self, topic: str, body: bytes) -> None:
        queue = await self._declare_retained(topic)
        await self._publish(queue, body, Basic.Properties(delivery_mode=2))

    async def follow(self, topic: str, handler: Handler) -> AmqpFollower:
        queue = await self._declare_retained(topic)
        follower = await self._consume_retained(topic, queue, handler)
        self._followers.add(follower)
        token = uuid4().hex
        caught_up = follower.expect(token)
        try:
            await self._publish(
                queue, b"", Basic.Properties(delivery_mode=2, headers={MARKER_HEADER: token})
            )
            async with asyncio.timeout(FOLLOW_TIMEOUT):
                await caught_up
        except TimeoutError as exc:
            await follower.cancel()
            raise TransportError(
                f"following {topic!r}: its retained log was not read within {FOLLOW_TIMEOUT:g} s"
            ) from exc
        except BaseException:
            await follower.cancel()
            raise
        return follower

    async def _consume_retained(self, topic: str, queue: str, handler: Handler) -> AmqpFollower:
        """Consume stream ``queue`` from its first offset, on a channel of its own.

        A stream that was just declared (by us or by a peer starting at the same moment) may
        not be startable yet: RabbitMQ then refuses the consume (``does not have a replica on
        the local node``) or fails it with an internal error that closes the whole connection
        (``stream_not_found``).  Both pass within milliseconds, so the consume is tried again,
        a bounded number of times, once the robust connection is back.
        """
        connection = self._require(self._connection)
        for attempt in range(1, _FOLLOW_ATTEMPTS + 1):
            channel = await self._open_channel(connection, confirms=False)
            follower = AmqpFollower(topic, handler, channel, self._followers)
            try:
                await channel.set_qos(prefetch_count=_FOLLOW_PREFETCH)
                stream = await self._consumer_queue(channel, queue, self._queues[queue])
                # Restored after a reconnect with the same arguments: from the first offset.
                await stream.consume(follower.on_message, arguments={"x-stream-offset": "first"})
            except BaseException as exc:
                await follower.cancel()
                if not isinstance(exc, _BROKER_ERRORS):
                    raise
                if attempt == _FOLLOW_ATTEMPTS:
                    raise TransportError(f"cannot follow {topic!r}: {_reason(exc)}") from exc
                pause = _FOLLOW_RETRY * 2 ** (attempt - 1)
                logger.info("following %r: %s; trying again in %.2g s", topic, _reason(exc), pause)
                await asyncio.sleep(pause)
                await self._connected(connection)
            else:
                return follower
        raise AssertionError("unreachable")

    async def _connected(self, connection: AbstractRobustConnection) -> None:
        """Wait for a reconnecting connection to be back, at most ``connect_timeout``."""
        try:
            async with asyncio.timeout(self._connect_timeout):
                await connection.ready()
        except TimeoutError as exc:
            raise TransportError(
                f"RabbitMQ at {self._display} is unreachable: no connection within "
                f"{self._connect_timeout:g} s"
            ) from exc

    async def _declare_retained(self, topic: str) -> str:
        """Declare the stream of retained topic ``topic``; returns its logical queue."""
        name = retained_queue(topic)
        if name in self._queues:
            return name
        channel = self._require(self._topology)
        arguments: dict[str, Any] = {
            "x-queue-type": "stream",
            "x-max-age": f"{max(1, round(RETAINED_MAX_AGE))}s",
            "x-max-length-bytes": RETAINED_MAX_BYTES,
            "x-stream-max-segment-size-bytes": RETAINED_SEGMENT_BYTES,
        }
        spec = _QueueSpec(self.broker_name(name), True, False, arguments)
        try:
            await self._ready(channel)
            await channel.declare_queue(spec.name, durable=True, arguments=arguments)
        except _BROKER_ERRORS as exc:
            raise TransportError(f"cannot declare stream {spec.name!r}: {_reason(exc)}") from exc
        self._queues[name] = spec
        return name

    async def delete_queues(self, names: Iterable[str]) -> None:
        """Delete logical queues ``names`` with their messages, cancelling this transport's
        consumers on them first.  For tests and tear-downs."""
        channel = self._require(self._topology)
        targets = set(names)
        for subscription in [s for s in self._subscriptions if s.queue in targets]:
            await subscription.cancel()
        for name in targets:
            self._queues.pop(name, None)
            try:
                await self._ready(channel)
                await channel.queue_delete(self.broker_name(name))
            except _BROKER_ERRORS as exc:
                raise TransportError(
                    f"cannot delete queue {self.broker_name(name)!r}: {_reason(exc)}"
                ) from exc

    async def delete_topology(self) -> None:
        """Cancel every subscription, then delete every queue this transport declared (the
        dead-letter queue included) and the broadcast exchange.  For tests and tear-downs."""
        channel = self._require(self._topology)
        for follower in list(self._followers):
            await follower.cancel()
        for subscription in list(self._subscriptions):
            await subscription.cancel()
        await self.delete_queues(list(self._queues))
        try:
            await self._ready(channel)
            await channel.exchange_delete(self.broadcast_exchange)
        except _BROKER_ERRORS as exc:
            raise TransportError(
                f"cannot delete exchange {self.broadcast_exchange!r}: {_reason(exc)}"
            ) from exc

    # -- internals -------------------------------------------------------------------------

    async def _connect(self) -> AbstractRobustConnection:
        url = URL(self._url)
        if "name" not in url.query:  # shown by rabbitmqctl list_connections / the management UI
            url = url.update_query(name=self._prefix)
        if "reconnect_interval" not in url.query:
            url = url.update_query(reconnect_interval=DEFAULT_RECONNECT_INTERVAL)
        # Built by hand rather than through aio_pika.connect_robust so that a connection that
        # failed (or timed out) is closed here, stopping its background reconnection task.
        connection = aio_pika.RobustConnection(url)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await connection.connect(timeout=self._connect_timeout)
        except (TimeoutError, *_BROKER_ERRORS) as exc:
            with contextlib.suppress(*_BROKER_ERRORS):
                await connection.close()
            reason = (
                f"no answer within {self._connect_timeout:g} s"
                if isinstance(exc, TimeoutError)
                else _reason(exc)
            )
            raise TransportError(
                f"cannot connect to RabbitMQ at {self._display}: {self._scrub(reason)}"
            ) from exc
        except BaseException:
            with contextlib.suppress(*_BROKER_ERRORS):
                await connection.close()
            raise
        return connection

    async def _open_channel(
        self, connection: AbstractRobustConnection, *, confirms: bool
    ) -> AbstractRobustChannel:
        try:
            # on_return_raises: an unroutable mandatory publish raises PublishError;
            # aio-pika's default (False) reports it as a success and the message is gone.
            channel = connection.channel(publisher_confirms=confirms, on_return_raises=confirms)
        except RuntimeError as exc:  # "Connection was not opened": it is reconnecting
            raise TransportError(
                f"cannot open a channel to {self._display}: the connection is down ({exc})"
            ) from exc
        try:
            async with asyncio.timeout(self._connect_timeout):
                await channel
        except TimeoutError as exc:
            raise TransportError(f"cannot open a channel to {self._display}: timed out") from exc
        except _BROKER_ERRORS as exc:
            raise TransportError(
                f"cannot open a channel to {self._display}: {_reason(exc)}"
            ) from exc
        return channel

    async def _consumer_queue(
        self, channel: AbstractRobustChannel, queue: str, spec: _QueueSpec | None
    ) -> AbstractRobustQueue:
        await self._ready(channel)
        if spec is None:  # declared by someone else: it must exist already
            return await channel.declare_queue(self.broker_name(queue), passive=True)
        # Declared again on this channel so that restoring the channel alone restores it.
        return await channel.declare_queue(
            spec.name, durable=spec.durable, auto_delete=spec.auto_delete, arguments=spec.arguments
        )

    async def _abandon(self, channel: AbstractRobustChannel) -> None:
        """Close a channel whose setup failed (the broker may have closed it already)."""
        try:
            await channel.close()
        except _BROKER_ERRORS as exc:
            logger.debug("closing an abandoned channel: %s", _reason(exc))

    async def _ready(self, channel: AbstractRobustChannel) -> None:
        """Wait for a reconnecting channel to be restored, at most ``connect_timeout``."""
        try:
            async with asyncio.timeout(self._connect_timeout):
                await channel.ready()
        except TimeoutError as exc:
            raise TransportError(
                f"RabbitMQ at {self._display} is unreachable: no connection within "
                f"{self._connect_timeout:g} s"
            ) from exc

    def _require(self, value: _T | None) -> _T:
        if value is None:
            raise TransportError("the amqp transport is not open")
        return value

    def _scrub(self, text: str) -> str:
        password = urlsplit(self._url).password
        return text.replace(password, "***") if password else text


def _channel(message: DeliveredMessage) -> object:
    """The aiormq channel that delivered ``message`` (a restored channel is another one)."""
    return message.channel


def _tag(delivery: AmqpDelivery) -> int:
    return delivery._message.delivery_tag or 0


def _priority(message: DeliveredMessage) -> int:
    return message.header.properties.priority or 0


async def _settle(message: DeliveredMessage, *, ack: bool, requeue: bool = False) -> None:
    """Ack or reject one delivery on the channel that delivered it (raises aiormq's
    ``ChannelInvalidStateError`` if that channel closed: the broker requeued it)."""
    channel = cast(aiormq.Channel, message.channel)
    if ack:
        await channel.basic_ack(message.delivery_tag or 0)
    else:
        await channel.basic_reject(message.delivery_tag or 0, requeue=requeue)


def _display(url: str) -> str:
    """``scheme://host:port/vhost`` of a broker URL: no user, no password, no query."""
    try:
        parts = urlsplit(url)
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        host = parts.hostname or "localhost"
    except ValueError:
        return "<invalid URL>"
    return f"{parts.scheme}://{host}:{port}{parts.path or '/'}"


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return None if value is None else str(value)


def _digest(body: bytes, salt: str) -> str:
    """A stable id for a dead letter that carries none of its own."""
    return hashlib.sha256(salt.encode() + b"\x00" + body).hexdigest()[:12]


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
