"""In-memory transport: the embedded mode's broker, with RabbitMQ's delivery semantics.

Priority queues, per-consumer prefetch, at-least-once delivery (unacked deliveries are
requeued, marked redelivered, when their consumer is cancelled), consumers that stop
without giving back what they hold, dead-lettering on ``reject(requeue=False)``, an error
when publishing to an undeclared queue, and retained topics with RabbitMQ's retention
(by age and by size).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aexec.errors import TransportError, UnroutableError
from aexec.transport import DEAD_LETTER_QUEUE, Announcement, Delivery, Handler
from aexec.wire import MAX_PRIORITY, RETAINED_MAX_AGE, RETAINED_MAX_BYTES

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Queue:
    name: str
    max_priority: int
    heap: list[tuple[int, int, bytes, bool]] = field(default_factory=list)
    consumers: list[_Consumer] = field(default_factory=list)
    turn: int = 0


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
                        except Exception:
                            log.exception(
                                "handler for queue %r failed; dead-lettering its delivery",
                                self.queue.name,
                            )
                            await delivery.reject(requeue=False)

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
            self.transport._push(self.queue, delivery.body, delivery.priority, delivery.redelivered)
        self.transport._dispatch(self.queue)

    async def cancel(self) -> None:
        if not self.active:
            return
        self.active = False
        if self in self.queue.consumers:
            self.queue.consumers.remove(self)
        for delivery in list(self.unacked):
            delivery.consumer = None
            self.transport._requeue(self.queue, delivery.body, delivery.priority)
        self.unacked.clear()
        self.ready.clear()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
            await asyncio.wait([self.task])
        self.transport._dispatch(self.queue)


class MemoryDelivery:
    __slots__ = ("body", "consumer", "handed", "priority", "redelivered")

    def __init__(self, body: bytes, priority: int, redelivered: bool, consumer: _Consumer) -> None:
        self.body = body
        self.priority = priority
        self.redelivered = redelivered
        self.consumer: _Consumer | None = consumer
        self.handed = False  # given to the handler (stop() keeps it with its consumer)

    async def ack(self) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        self.consumer = None
        consumer.unacked.discard(self)
        consumer.transport._dispatch(consumer.queue)

    async def reject(self, requeue: bool = False) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        self.consumer = None
        consumer.unacked.discard(self)
        transport = consumer.transport
        if requeue:
            transport._requeue(consumer.queue, self.body, self.priority)
        else:
            dead = transport._queues.get(DEAD_LETTER_QUEUE)
            if dead is not None and dead is not consumer.queue:
                transport._push(dead, self.body, 0, False)
                transport._dispatch(dead)
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
    """A broker in this process.  One instance is one broker: share it between peers."""

    def __init__(
        self,
        *,
        retained_max_age: float = RETAINED_MAX_AGE,
        retained_max_bytes: int = RETAINED_MAX_BYTES,
    ) -> None:
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
        await self.declare_queue(DEAD_LETTER_QUEUE, max_priority=0)

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
        self._push(q, body, priority, False)
        self._dispatch(q)

    async def publish_many(self, messages: Sequence[tuple[str, bytes, int]]) -> None:
        for queue, body, priority in messages:
            q = self._queues.get(queue)
            if q is None:
                raise UnroutableError(f"no queue named {queue!r}: the message was not routed")
            self._push(q, body, priority, False)
            self._dispatch(q)

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

    async def broadcast(self, topic: str, body: bytes) -> None:
        for q in list(self._topics.get(topic, ())):
            self._push(q, body, 0, False)
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

    def _push(self, q: _Queue, body: bytes, priority: int, redelivered: bool) -> None:
        priority = min(max(priority, 0), q.max_priority)
        heapq.heappush(q.heap, (-priority, next(self._seq), body, redelivered))

    def _requeue(self, q: _Queue, body: bytes, priority: int) -> None:
        self._push(q, body, priority, True)

    def _dispatch(self, q: _Queue) -> None:
        consumers = q.consumers
        heap = q.heap
        while heap and consumers:
            n = len(consumers)
            for k in range(n):
                consumer = consumers[(q.turn + k) % n]
                if len(consumer.unacked) < consumer.prefetch:
                    break
            else:
                return
            q.turn = (q.turn + k + 1) % n
            neg_priority, _, body, redelivered = heapq.heappop(heap)
            delivery = MemoryDelivery(body, -neg_priority, redelivered, consumer)
            consumer.unacked.add(delivery)
            consumer.ready.append(delivery)
            self._wakes[consumer].set()
