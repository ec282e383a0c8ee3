"""In-memory transport: the embedded mode's broker, with RabbitMQ's delivery semantics.

Priority queues, per-consumer prefetch, at-least-once delivery (unacked deliveries are
requeued, marked redelivered, when their consumer is cancelled), consumers that stop
without giving back what they hold, dead-lettering on ``reject(requeue=False)`` to a
bounded dead-letter queue (its length, bytes and message TTL as on RabbitMQ: the oldest go
first; an expired message goes when it reaches the head), an error when publishing to an
undeclared queue, and retained topics with RabbitMQ's retention (by age and by size).

Its consumers are in this process, so it also carries messages as objects
(:meth:`MemoryTransport.hand_many`): the queues hold them as they are, and a delivery
encodes its message only when its ``body`` is read (or it is dead-lettered).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
import time
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from aexec.errors import TransportError, UnroutableError
from aexec.transport import (
    DEAD_LETTER_LIMITS,
    DEAD_LETTER_QUEUE,
    Announcement,
    DeadLetter,
    DeadLetterLimits,
    Delivery,
    Encodable,
    Handler,
    Replay,
    ack_each,
)
from aexec.wire import MAX_PRIORITY, RETAINED_MAX_AGE, RETAINED_MAX_BYTES

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Letter:
    """Why, where from and when a message was dead-lettered; when it expires; the priority
    it had (the dead-letter queue itself keeps them in arrival order)."""

    id: str
    queue: str
    reason: str
    dead_at: float
    expires_at: float
    priority: int


# (-priority, seq, body or message object, redelivered, dead letter info): seq is unique,
# so tuples never compare past it.  The dead-letter queue holds bodies only.
_Payload = bytes | Encodable
_Entry = tuple[int, int, _Payload, bool, "_Letter | None"]


@dataclass(slots=True)
class _Queue:
    name: str
    max_priority: int
    bounds: DeadLetterLimits | None = None
    heap: list[_Entry] = field(default_factory=list)
    consumers: list[_Consumer] = field(default_factory=list)
    turn: int = 0
    size: int = 0  # bytes of the bodies waiting (counted in bounded queues only)


class _Consumer:
    __slots__ = (
        "active",
        "handler",
        "prefetch",
        "queue",
        "ready",
        "stopped",
        "task",
        "transport",
        "unacked",
    )

    def __init__(self, transport: MemoryTransport, queue: _Queue, handler: Handler, prefetch: int):
        self.transport = transport
        self.queue = queue
        self.handler = handler
        self.prefetch = max(1, prefetch)
        self.unacked: set[MemoryDelivery] = set()
        self.ready: list[MemoryDelivery] = []
        self.active = True
        self.stopped = False
        self.task: asyncio.Task[None] | None = None

    async def pump(self, wake: asyncio.Event) -> None:
        while self.active:
            await wake.wait()
            wake.clear()
            while self.ready:
                batch, self.ready = self.ready, []
                for delivery in batch:
                    if delivery.consumer is self and self.active and not self.stopped:
                        delivery.handed = True
                        try:
                            await self.handler(delivery)
                        except Exception as exc:
                            log.exception(
                                "handler for queue %r failed; dead-lettering its delivery",
                                self.queue.name,
                            )
                            reason = f"handler failed: {type(exc).__name__}: {exc}"
                            await delivery.reject(requeue=False, reason=reason)

    async def stop(self) -> None:
        """Take nothing more; hand back, as they were, the deliveries not handed to the
        handler yet; keep the others until they are settled or :meth:`cancel` is called."""
        if self.stopped or not self.active:
            return
        self.stopped = True
        if self in self.queue.consumers:
            self.queue.consumers.remove(self)
        self.ready.clear()
        for delivery in [d for d in self.unacked if not d.handed]:
            delivery.consumer = None
            self.unacked.discard(delivery)
            self.transport._push(
                self.queue,
                delivery.payload,
                delivery.priority,
                delivery.redelivered,
                delivery.letter,
            )
        self.transport._dispatch(self.queue)

    async def cancel(self) -> None:
        if not self.active:
            return
        self.active = False
        if self in self.queue.consumers:
            self.queue.consumers.remove(self)
        for delivery in list(self.unacked):
            delivery.consumer = None
            self.transport._push(
                self.queue, delivery.payload, delivery.priority, True, delivery.letter
            )
        self.unacked.clear()
        self.ready.clear()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
            await asyncio.wait([self.task])
        self.transport._dispatch(self.queue)


class MemoryDelivery:
    __slots__ = ("_body", "carried", "consumer", "handed", "letter", "priority", "redelivered")

    def __init__(
        self,
        payload: _Payload,
        priority: int,
        redelivered: bool,
        consumer: _Consumer,
        letter: _Letter | None = None,
    ) -> None:
        if isinstance(payload, bytes):
            self._body: bytes | None = payload
            self.carried: Encodable | None = None
        else:  # handed as an object (see :meth:`MemoryTransport.hand_many`)
            self._body = None
            self.carried = payload
        self.priority = priority
        self.redelivered = redelivered
        self.consumer: _Consumer | None = consumer
        self.letter = letter
        self.handed = False  # given to the handler (stop() keeps it with its consumer)

    @property
    def body(self) -> bytes:
        body = self._body
        if body is None:
            assert self.carried is not None
            body = self._body = self.carried.encode()
        return body

    @property
    def payload(self) -> _Payload:
        """What was queued: the body, or the message handed as an object."""
        return self.body if self.carried is None else self.carried

    async def ack(self) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        self.consumer = None
        consumer.unacked.discard(self)
        consumer.transport._dispatch(consumer.queue)

    async def reject(self, requeue: bool = False, *, reason: str | None = None) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        self.consumer = None
        consumer.unacked.discard(self)
        transport = consumer.transport
        if requeue:
            transport._push(consumer.queue, self.payload, self.priority, True, self.letter)
        else:
            transport._dead_letter(consumer.queue, self.body, self.priority, reason)
        transport._dispatch(consumer.queue)


class _Subscription:
    __slots__ = ("_consumer",)

    def __init__(self, consumer: _Consumer) -> None:
        self._consumer = consumer

    async def stop(self) -> None:
        await self._consumer.stop()

    async def cancel(self) -> None:
        await self._consumer.cancel()


class _TopicSubscription:
    __slots__ = ("_consumer", "_topic")

    def __init__(self, consumer: _Consumer, topic: list[_Queue]) -> None:
        self._consumer = consumer
        self._topic = topic

    async def stop(self) -> None:
        await self.cancel()  # a broadcast subscriber holds nothing

    async def cancel(self) -> None:
        if self._consumer.queue in self._topic:
            self._topic.remove(self._consumer.queue)
        await self._consumer.cancel()


class _Retained:
    """One retained topic: its announcements ``(monotonic time, body)``, oldest first."""

    __slots__ = ("entries", "followers", "size")

    def __init__(self) -> None:
        self.entries: collections.deque[tuple[float, bytes]] = collections.deque()
        self.size = 0
        self.followers: list[_Follower] = []

    def prune(self, max_age: float, max_bytes: int) -> None:
        entries, oldest = self.entries, time.monotonic() - max_age
        while entries and (entries[0][0] < oldest or self.size > max_bytes):
            self.size -= len(entries.popleft()[1])


class _Follower:
    """Hands a follower's handler its announcements one at a time, in order, from a task of
    its own."""

    __slots__ = ("_handler", "_items", "_retained", "_task", "_topic")

    def __init__(self, topic: str, retained: _Retained, handler: Handler) -> None:
        self._topic = topic
        self._retained = retained
        self._handler = handler
        self._items: asyncio.Queue[bytes | asyncio.Future[None]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._pump(), name=f"aexec-memory-follower-{self._topic}"
        )

    def put(self, item: bytes | asyncio.Future[None]) -> None:
        self._items.put_nowait(item)

    async def _pump(self) -> None:
        while True:
            item = await self._items.get()
            if isinstance(item, asyncio.Future):
                if not item.done():
                    item.set_result(None)  # every earlier announcement was handled
                continue
            try:
                await self._handler(Announcement(item))
            except Exception:
                log.exception("a follower of %r failed on an announcement", self._topic)

    async def stop(self) -> None:
        await self.cancel()

    async def cancel(self) -> None:
        if self in self._retained.followers:
            self._retained.followers.remove(self)
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait([task])


class MemoryTransport:
    """A broker in this process.  One instance is one broker: share it between peers.

    ``dead_letters`` bounds its dead-letter queue (tests make them small); retained topics
    keep announcements for ``retained_max_age`` seconds and ``retained_max_bytes`` bytes."""

    def __init__(
        self,
        *,
        dead_letters: DeadLetterLimits = DEAD_LETTER_LIMITS,
        retained_max_age: float = RETAINED_MAX_AGE,
        retained_max_bytes: int = RETAINED_MAX_BYTES,
    ) -> None:
        self._dead_letter_limits = dead_letters
        self._queues: dict[str, _Queue] = {}
        self._seq = itertools.count()
        self._wakes: dict[_Consumer, asyncio.Event] = {}
        self._topics: dict[str, list[_Queue]] = {}
        self._retained: dict[str, _Retained] = {}
        self._retained_max_age = retained_max_age
        self._retained_max_bytes = retained_max_bytes
        self._open = False

    async def open(self) -> None:
        self._open = True
        if DEAD_LETTER_QUEUE not in self._queues:
            limits = self._dead_letter_limits
            self._queues[DEAD_LETTER_QUEUE] = _Queue(DEAD_LETTER_QUEUE, 0, limits)

    async def close(self) -> None:
        for queue in list(self._queues.values()):
            for consumer in list(queue.consumers):
                await consumer.cancel()
        for retained in self._retained.values():
            for follower in list(retained.followers):
                await follower.cancel()
        self._wakes.clear()
        self._open = False

    async def declare_queue(
        self,
        name: str,
        *,
        max_priority: int = MAX_PRIORITY,
        durable: bool = True,
        auto_delete: bool = False,
    ) -> None:
        if not self._open:
            raise TransportError("memory transport is not open")
        if name not in self._queues:
            self._queues[name] = _Queue(name, max_priority)

    async def publish(self, queue: str, body: bytes, *, priority: int = 0) -> None:
        q = self._queues.get(queue)
        if q is None:
            raise UnroutableError(f"no queue named {queue!r}: the message was not routed")
        self._push(q, body, priority, False, None)
        self._dispatch(q)

    async def publish_many(self, messages: Sequence[tuple[str, _Payload, int]]) -> None:
        # All queued first, then handed to consumers once a queue: the consumers take them
        # in priority order, as they would from a broker that had them all waiting.
        touched: dict[str, _Queue] = {}
        try:
            for queue, body, priority in messages:
                q = self._queues.get(queue)
                if q is None:
                    raise UnroutableError(f"no queue named {queue!r}: the message was not routed")
                self._push(q, body, priority, False, None)
                touched[queue] = q
        finally:
            for q in touched.values():
                self._dispatch(q)

    async def hand_many(self, messages: Sequence[tuple[str, Encodable, int]]) -> None:
        """Queue messages as objects, as :meth:`publish_many` queues bodies (see
        :class:`~aexec.transport.HandsOver`)."""
        await self.publish_many(messages)

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        await ack_each(deliveries)

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> _Subscription:
        q = self._queues.get(queue)
        if q is None:
            raise TransportError(f"cannot consume from undeclared queue {queue!r}")
        consumer = _Consumer(self, q, handler, prefetch)
        wake = asyncio.Event()
        self._wakes[consumer] = wake
        consumer.task = asyncio.get_running_loop().create_task(
            consumer.pump(wake), name=f"aexec-memory-consumer-{queue}"
        )
        q.consumers.append(consumer)
        self._dispatch(q)
        return _Subscription(consumer)

    async def delete_queues(self, names: Iterable[str]) -> None:
        for name in names:
            q = self._queues.pop(name, None)
            if q is not None:
                for consumer in list(q.consumers):
                    await consumer.cancel()
                q.heap.clear()
                q.size = 0

    async def queue_depths(self, names: Iterable[str]) -> dict[str, int]:
        depths = {}
        for name in names:
            q = self._queues.get(name)
            if q is not None:
                depths[name] = len(q.heap)
        return depths

    async def broadcast(self, topic: str, body: bytes) -> None:
        for q in list(self._topics.get(topic, ())):
            self._push(q, body, 0, False, None)
            self._dispatch(q)

    async def subscribe(self, topic: str, handler: Handler) -> _TopicSubscription:
        """Every broadcast on ``topic`` reaches ``handler`` once, as an auto-acked delivery."""
        q = _Queue(f"broadcast.{topic}.{next(self._seq)}", 0)
        self._topics.setdefault(topic, []).append(q)

        async def deliver(delivery: Delivery) -> None:
            await delivery.ack()
            await handler(delivery)

        consumer = _Consumer(self, q, deliver, 100)
        wake = asyncio.Event()
        self._wakes[consumer] = wake
        consumer.task = asyncio.get_running_loop().create_task(
            consumer.pump(wake), name=f"aexec-memory-subscriber-{topic}"
        )
        q.consumers.append(consumer)
        return _TopicSubscription(consumer, self._topics[topic])

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetter]:
        dead = self._dead_queue()
        self._expire(dead)
        entries = sorted(dead.heap)[:limit]
        return [_dead_letter(entry) for entry in entries]

    async def replay_dead_letters(self, ids: Collection[str] | None = None) -> list[Replay]:
        dead = self._dead_queue()
        self._expire(dead)
        done: list[Replay] = []
        kept: list[_Entry] = []
        for entry in sorted(dead.heap):
            letter = _dead_letter(entry)
            if ids is not None and letter.id not in ids:
                kept.append(entry)
                continue
            target = None if letter.queue is None else self._queues.get(letter.queue)
            if target is None or target is dead:
                kept.append(entry)
                done.append(Replay(letter, f"no queue named {letter.queue!r}"))
                continue
            self._push(target, letter.body, letter.priority, False, None)
            self._dispatch(target)
            done.append(Replay(letter))
        dead.heap = kept  # sorted: a heap
        dead.size = sum(len(_bytes(entry[2])) for entry in kept)
        return done

    async def announce(self, topic: str, body: bytes) -> None:
        if not self._open:
            raise TransportError("memory transport is not open")
        retained = self._retained_topic(topic)
        retained.entries.append((time.monotonic(), body))
        retained.size += len(body)
        retained.prune(self._retained_max_age, self._retained_max_bytes)
        for follower in retained.followers:
            follower.put(body)

    async def follow(self, topic: str, handler: Handler) -> _Follower:
        if not self._open:
            raise TransportError("memory transport is not open")
        retained = self._retained_topic(topic)
        retained.prune(self._retained_max_age, self._retained_max_bytes)
        follower = _Follower(topic, retained, handler)
        for _, body in retained.entries:
            follower.put(body)
        caught_up: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        follower.put(caught_up)
        retained.followers.append(follower)
        follower.start()
        try:
            await caught_up
        except BaseException:
            await follower.cancel()
            raise
        return follower

    def _retained_topic(self, topic: str) -> _Retained:
        retained = self._retained.get(topic)
        if retained is None:
            retained = self._retained[topic] = _Retained()
        return retained

    def queue_depth(self, queue: str) -> int:
        """Messages waiting (not delivered) in ``queue``."""
        q = self._queues.get(queue)
        return 0 if q is None else len(q.heap)

    def _dead_queue(self) -> _Queue:
        dead = self._queues.get(DEAD_LETTER_QUEUE)
        if dead is None:
            raise TransportError("memory transport is not open")
        return dead

    def _dead_letter(self, source: _Queue, body: bytes, priority: int, reason: str | None) -> None:
        dead = self._queues.get(DEAD_LETTER_QUEUE)
        if dead is None or dead is source:
            return
        now = time.time()
        letter = _Letter(
            uuid.uuid4().hex[:12],
            source.name,
            reason or "rejected",
            now,
            now + self._dead_letter_limits.ttl,
            priority,
        )
        self._push(dead, body, 0, False, letter)
        self._dispatch(dead)

    def _push(
        self, q: _Queue, body: _Payload, priority: int, redelivered: bool, letter: _Letter | None
    ) -> None:
        priority = min(max(priority, 0), q.max_priority)
        if q.bounds is not None:  # the dead-letter queue: bytes, sizes counted, bounds kept
            body = _bytes(body)
            q.size += len(body)
        heapq.heappush(q.heap, (-priority, next(self._seq), body, redelivered, letter))
        if q.bounds is not None:
            self._expire(q)
            # Over a bound, the oldest go first (RabbitMQ's drop-head overflow).
            while len(q.heap) > q.bounds.max_length or q.size > q.bounds.max_bytes:
                self._pop(q)

    def _pop(self, q: _Queue) -> _Entry:
        entry = heapq.heappop(q.heap)
        if q.bounds is not None:
            q.size -= len(_bytes(entry[2]))
        return entry

    def _expire(self, q: _Queue) -> None:
        """Drop expired messages at the head of a bounded queue (as RabbitMQ does)."""
        now = time.time()
        while q.heap and (letter := q.heap[0][4]) is not None and letter.expires_at <= now:
            self._pop(q)

    def _dispatch(self, q: _Queue) -> None:
        consumers = q.consumers
        heap = q.heap
        if q.bounds is not None:
            self._expire(q)
        while heap and consumers:
            n = len(consumers)
            for k in range(n):
                consumer = consumers[(q.turn + k) % n]
                if len(consumer.unacked) < consumer.prefetch:
                    break
            else:
                return
            q.turn = (q.turn + k + 1) % n
            neg_priority, _, body, redelivered, letter = self._pop(q)
            delivery = MemoryDelivery(body, -neg_priority, redelivered, consumer, letter)
            consumer.unacked.add(delivery)
            consumer.ready.append(delivery)
            self._wakes[consumer].set()


def _bytes(payload: _Payload) -> bytes:
    return payload if isinstance(payload, bytes) else payload.encode()


def _dead_letter(entry: _Entry) -> DeadLetter:
    neg_priority, seq, payload, _, letter = entry
    body = _bytes(payload)
    if letter is None:  # published to the dead-letter queue directly
        return DeadLetter(f"m{seq}", None, "published here", None, body, -neg_priority)
    return DeadLetter(letter.id, letter.queue, letter.reason, letter.dead_at, body, letter.priority)
