"""The coordinator's gateway to unchanged Celery workers, over aio-pika (and Redis).

Topology on Celery's broker::

    connection (robust)
    ├── publish channel   confirms + ``on_return_raises``: task messages to the default
    │                     exchange, routed by the Celery queue's name (``mandatory``: a queue
    │                     nobody declared fails the step instead of losing the task); revoke
    │                     broadcasts to the ``celery.pidbox`` fanout exchange
    └── reply channel     (``rpc://``) consumes ``<prefix>.celery.replies``, a durable queue
                          that every coordinator of the deployment shares

A task message names the reply queue (``reply_to``) and carries the attempt in its task id
(:func:`~aexec.celery.protocol.task_id`).  What comes back — over ``rpc://``, or from a
Redis backend (the ``celery-task-meta-<id>`` channel, and its key for results stored while
nobody listened) — becomes aexec's own reply: STARTED and RETRY a
:class:`~aexec.messages.Progress`, SUCCESS, FAILURE and REVOKED a
:class:`~aexec.messages.Completion`.  The coordinator records each completion once per
attempt, so a result heard twice (a redelivery, the channel and the key) changes nothing;
a result about a run another coordinator drives is forwarded to it.  An ``rpc://`` reply
is acked only after the coordinator committed its effect.

While a task runs (STARTED), the gateway heartbeats for it on behalf of its Celery worker
(Celery workers do not heartbeat to aexec), as long as that worker is alive: an
``events`` channel consumes the ``worker.*`` events of Celery's event exchange
(``celeryev``, or the broker URL's ``event_exchange`` query parameter) into a queue of its
own, and a worker that said ``worker-offline``, or that fell silent for two of its
heartbeat periods, is taken for gone (:mod:`aexec.celery.liveness`).  Its tasks are then
vouched for no more: unless another worker starts them (an ``acks_late`` task, which
RabbitMQ redelivers under the same id), the coordinator takes them for lost after its
``worker_timeout`` and sends each again as a new attempt, revoking the old one.  A task
that was not ``acks_late`` is gone with its worker: this is what keeps it from hanging.
Nothing is concluded about workers never heard (heartbeats off, ``--without-heartbeat``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
import aiormq.exceptions
import pamqp.exceptions
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection
from pamqp.commands import Basic
from yarl import URL

from aexec import codec, messages
from aexec.background import Background
from aexec.celery import gateway_wanted, protocol
from aexec.celery.liveness import WorkerLiveness
from aexec.config import Settings
from aexec.errors import CodecError, ObjectStoreError, TransportError
from aexec.gateway import GatewayStep
from aexec.inbox import DispatchFailed, Item, Reply, Unconfirmed
from aexec.objects import ObjectStore, load_value, output_key
from aexec.redaction import redact
from aexec.transport import Announcement
from aexec.types import ErrorInfo

log = logging.getLogger(__name__)

KIND = "celery"
PIDBOX_EXCHANGE = "celery.pidbox"
EVENT_EXCHANGE = "celeryev"  # Celery's event_exchange default
_BROKER_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    pamqp.exceptions.PAMQPException,
    OSError,
)


@dataclass(frozen=True, slots=True)
class CeleryConfig:
    """Where Celery's workers listen (``broker``, an ``amqp://`` URL) and report results
    (``backend``: ``rpc://``, or a ``redis://`` URL).  Sizes in bytes, durations in float
    seconds."""

    broker: str
    backend: str = "rpc://"
    prefix: str = "aexec"
    inline_threshold: int = 64 * 1024
    max_value_size: int = 256 * 1024 * 1024
    heartbeat_interval: float = 1.0
    connect_timeout: float = 10.0
    retry_delay: float = 1.0  # before an unconfirmed task is sent again as a new attempt
    event_exchange: str = EVENT_EXCHANGE  # where Celery workers send their worker-* events

    @property
    def reply_queue(self) -> str:
        return f"{self.prefix}.celery.replies"

    @property
    def uses_rpc(self) -> bool:
        return self.backend.startswith("rpc:")

    @property
    def redis(self) -> tuple[str, str]:
        """The Redis URL and the prefix of its result keys: Celery's ``global_keyprefix``
        (its ``result_backend_transport_options``), given as that query parameter."""
        parts = urlsplit(self.backend)
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefix = dict(query).get("global_keyprefix", "")
        if prefix and prefix[-1] not in ":_-.":
            prefix += "_"  # as Celery does
        rest = urlencode([(k, v) for k, v in query if k != "global_keyprefix"])
        return urlunsplit(parts._replace(query=rest)), prefix + "celery-task-meta-"


class _RpcReply:
    """An ``rpc://`` reply, translated: acking it acks the Celery message."""

    __slots__ = ("_message", "body")

    def __init__(self, body: bytes, message: AbstractIncomingMessage) -> None:
        self.body = body
        self._message = message

    @property
    def redelivered(self) -> bool:
        return bool(self._message.redelivered)

    async def ack(self) -> None:
        if not self._message.processed:
            with contextlib.suppress(*_BROKER_ERRORS):
                await self._message.ack()

    async def reject(self, requeue: bool = False, *, reason: str | None = None) -> None:
        if self._message.processed:
            return
        with contextlib.suppress(*_BROKER_ERRORS):
            if requeue:
                await self._message.reject(requeue=True)
            else:
                log.error("dropped a Celery reply: %s", reason or "rejected")
                await self._message.ack()


class CeleryGateway:
    """Sends Celery steps as task messages and hands their results to the coordinator."""

    def __init__(self, config: CeleryConfig, objects: ObjectStore) -> None:
        self.config = config
        self._objects = objects
        self._display = redact(config.broker)
        self._post: Callable[[Item], None] | None = None
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._background: Background | None = None
        self._started: dict[tuple[str, str, int], str] = {}  # running attempt → Celery worker
        self._pending: set[str] = set()  # task ids sent here with no result yet (Redis)
        self._liveness = WorkerLiveness()
        self._events: AbstractRobustChannel | None = None
        self._events_queue = f"{config.prefix}.celery.events.{uuid.uuid4().hex[:12]}"

    def __repr__(self) -> str:
        return f"<CeleryGateway {self._display} backend={redact(self.config.backend)}>"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, post: Callable[[Item], None]) -> None:
        self._post = post
        connection = aio_pika.RobustConnection(URL(self.config.broker))
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                await connection.connect(timeout=self.config.connect_timeout)
                self._publisher = await connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                await self._publisher.declare_exchange(
                    PIDBOX_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=False
                )
                self._events = await self._listen_events(connection)
                if self.config.uses_rpc:
                    replies = await connection.channel()
                    await replies.set_qos(prefetch_count=1000)
                    queue = await replies.declare_queue(self.config.reply_queue, durable=True)
                    await queue.consume(self._on_rpc_reply)
        except (TimeoutError, *_BROKER_ERRORS) as exc:
            with contextlib.suppress(*_BROKER_ERRORS):
                await connection.close()
            raise TransportError(
                f"cannot connect to Celery's broker at {self._display}: {type(exc).__name__}"
            ) from exc
        self._connection = connection
        background = Background("celery gateway")
        await background.__aenter__()
        self._background = background
        background.start_loop(self._heartbeat(), name="aexec-celery-heartbeat")
        if not self.config.uses_rpc:
            background.start_loop(self._listen_redis(), name="aexec-celery-redis")

    async def close(self) -> None:
        background, self._background = self._background, None
        if background is not None:
            await background.aclose()
        connection, self._connection = self._connection, None
        self._publisher = self._events = None
        if connection is not None:
            with contextlib.suppress(*_BROKER_ERRORS):
                await connection.close()

    # -- sending ---------------------------------------------------------------------------

    async def publish(self, steps: Sequence[GatewayStep]) -> list[GatewayStep]:
        sent = await asyncio.gather(*(self._publish_one(s) for s in steps))
        # A new attempt supersedes the one before: if that one still waits in a queue (its
        # run was taken over, its worker fell silent), it must not run as well.
        superseded = [(s.run_id, s.step.key, s.attempt - 1) for s in steps if s.attempt > 1]
        if superseded:
            await self.revoke(superseded)
        return [s for s, ok in zip(steps, sent, strict=True) if ok]

    def vouch(self, attempts: Sequence[tuple[str, str, int, str]]) -> None:
        for run_id, key, attempt, worker in attempts:
            self._started[(run_id, key, attempt)] = worker
            self._liveness.named(worker, time.monotonic())
            if not self.config.uses_rpc:
                with contextlib.suppress(CodecError):
                    self._pending.add(protocol.task_id(run_id, attempt, key))
        if not self.config.uses_rpc and self._background is not None:
            self._background.start_work(self._fetch_stored())

    async def _publish_one(self, s: GatewayStep) -> bool:
        """Send one step; True once the broker confirmed it."""
        key = s.step.key
        try:
            message = await self._task_message(s)
        except CodecError as exc:
            self._fail(s, ErrorInfo("CodecError", str(exc), "", False))
            return False
        except ObjectStoreError as exc:
            self._fail(s, ErrorInfo(type(exc).__name__, f"cannot load an input: {exc}"))
            return False
        properties = Basic.Properties(
            content_type=message.content_type,
            content_encoding="utf-8",
            correlation_id=message.task_id,
            reply_to=self.config.reply_queue if self.config.uses_rpc else None,
            priority=message.priority,
            delivery_mode=2,
            headers=message.headers,
        )
        if not self.config.uses_rpc:
            # Before it is sent: a result stored before the Redis listener (re)subscribed
            # is read back only for the task ids pending when it subscribes.
            self._pending.add(message.task_id)
        try:
            channel = await self._channel()
            underlay = await channel.get_underlay_channel()
            await underlay.basic_publish(
                message.body,
                exchange="",
                routing_key=s.step.route,
                properties=properties,
                mandatory=True,
            )
        except aiormq.exceptions.PublishError:
            self._pending.discard(message.task_id)
            error = ErrorInfo(
                "UnroutableError",
                f"no Celery queue named {s.step.route!r} on {self._display}: start a Celery "
                f"worker that consumes it (celery worker -Q {s.step.route})",
            )
            self._fail(s, error)
        except (TransportError, *_BROKER_ERRORS) as exc:
            self._pending.discard(message.task_id)
            log.warning("the Celery task of step %s of run %s was not confirmed: %s",
                        key, s.run_id, exc)  # fmt: skip
            await asyncio.sleep(self.config.retry_delay)
            self._posted(Unconfirmed(s.run_id, s.index, s.attempt, str(exc) or type(exc).__name__))
        else:
            return True
        return False

    async def _task_message(self, s: GatewayStep) -> protocol.TaskMessage:
        limit = self.config.max_value_size
        values = [await load_value(self._objects, blob, max_size=limit) for blob in s.inputs]
        call = codec.decode(s.step.call, inputs=values)
        args, kwargs = call
        where = f"an argument of Celery step {s.step.key!r}"
        return protocol.task_message(
            s.step.name,
            protocol.task_id(s.run_id, s.attempt, s.step.key),
            protocol.to_celery(list(args), where),
            protocol.to_celery(dict(kwargs), where),
            protocol.TaskOptions.from_options(dict(s.step.task_options)),
            priority=s.priority,
            root_id=None,
        )

    async def _channel(self) -> AbstractRobustChannel:
        channel = self._publisher
        if channel is None:
            raise TransportError("the Celery gateway is not open")
        if channel.is_closed:
            async with asyncio.timeout(self.config.connect_timeout):
                await channel.ready()
        return channel

    def _fail(self, s: GatewayStep, error: ErrorInfo) -> None:
        log.error("cannot send step %s of run %s to Celery: %s", s.step.key, s.run_id, error)
        self._posted(DispatchFailed(s.run_id, s.index, s.attempt, error))

    def _posted(self, item: Item) -> None:
        if self._post is not None:
            self._post(item)

    async def revoke(self, attempts: Sequence[tuple[str, str, int]]) -> None:
        ids = []
        for run_id, key, attempt in attempts:
            self._started.pop((run_id, key, attempt), None)
            with contextlib.suppress(CodecError):
                ids.append(protocol.task_id(run_id, attempt, key))
        if not ids:
            return
        self._pending.difference_update(ids)
        body = protocol.revoke_message(ids, terminate=True)
        properties = Basic.Properties(
            content_type=protocol.JSON,
            content_encoding="utf-8",
            delivery_mode=1,
            headers={"clock": 0, "expires": time.time() + 60.0},
        )
        try:
            channel = await self._channel()
            underlay = await channel.get_underlay_channel()
            await underlay.basic_publish(
                body, exchange=PIDBOX_EXCHANGE, routing_key="", properties=properties
            )
        except (TimeoutError, TransportError, *_BROKER_ERRORS) as exc:
            log.warning("could not revoke %d Celery tasks: %s", len(ids), exc)

    # -- results ---------------------------------------------------------------------------

    async def _on_rpc_reply(self, message: AbstractIncomingMessage) -> None:
        try:
            meta = protocol.loads(message.body, message.content_type, message.content_encoding)
            result = protocol.TaskResult.from_meta(meta, message.correlation_id)
        except CodecError as exc:
            log.error("dropped a malformed Celery reply: %s", exc)
            with contextlib.suppress(*_BROKER_ERRORS):
                await message.ack()
            return
        body = await self._translate(result)
        if body is None:
            with contextlib.suppress(*_BROKER_ERRORS):
                await message.ack()
            return
        self._posted(Reply(_RpcReply(body, message)))

    async def _translate(self, result: protocol.TaskResult) -> bytes | None:
        """The aexec reply (encoded) that ``result`` amounts to; None for nothing to say
        (a task that is not aexec's, PENDING)."""
        attempt_of = protocol.parse_task_id(result.task_id)
        if attempt_of is None:
            log.warning("ignored a Celery result for task %s, not one aexec sent", result.task_id)
            return None
        run_id, attempt, key = attempt_of
        now = time.time()
        running = (run_id, key, attempt)
        if result.status == protocol.STARTED:
            worker = result.worker or "celery"
            self._started[running] = worker
            self._liveness.named(worker, time.monotonic())
            return messages.Progress(run_id, key, attempt, worker, now).encode()
        if result.status == protocol.RETRY:
            worker = self._started.get(running, result.worker or "celery")
            error = result.error()
            text = f"Celery retries the task: {error.type}: {error.message}"
            return messages.Progress(run_id, key, attempt, worker, now, message=text).encode()
        if not result.ready:
            return None
        worker = self._started.pop(running, result.worker or "celery")
        self._pending.discard(result.task_id)
        if result.status != protocol.SUCCESS:
            return messages.Completion(
                run_id, key, attempt, None, result.error(), worker, now, now
            ).encode()
        try:
            output = await self._output(run_id, key, attempt, result.result)
        except (CodecError, ObjectStoreError) as exc:
            error = ErrorInfo(type(exc).__name__, f"cannot keep the task's result: {exc}")
            return messages.Completion(run_id, key, attempt, None, error, worker, now, now).encode()
        return messages.Completion(run_id, key, attempt, output, None, worker, now, now).encode()

    async def _output(self, run_id: str, key: str, attempt: int, value: Any) -> bytes:
        encoded = codec.encode(value)
        if len(encoded) > self.config.max_value_size:
            raise CodecError(
                f"{len(encoded)} bytes, over the {self.config.max_value_size}-byte limit on "
                "values (AEXEC_MAX_VALUE_SIZE)"
            )
        if len(encoded) <= self.config.inline_threshold:
            return encoded
        object_key = output_key(run_id, key, attempt)
        await self._objects.put(object_key, encoded)
        return codec.encode(codec.ObjectRef(object_key))

    async def _heartbeat(self) -> None:
        """Vouch for the Celery tasks that run now (STARTED), for their Celery workers,
        while those are alive."""
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            for worker, attempts in self._alive_attempts().items():
                body = messages.Heartbeat(worker, time.time(), attempts).encode()
                self._posted(Reply(Announcement(body)))

    def _alive_attempts(self) -> dict[str, list[tuple[str, str, int]]]:
        """The running attempts by Celery worker, those of workers gone left out (and
        forgotten: a redelivery that starts on another worker is heard again)."""
        now = time.monotonic()
        events = self._events
        if events is None or events.is_closed:
            self._liveness.deaf()
        elif not self._liveness.is_listening:
            self._liveness.listening(now)
        by_worker: dict[str, list[tuple[str, str, int]]] = {}
        gone: dict[str, tuple[str, list[tuple[str, str, int]]]] = {}
        for attempt, worker in list(self._started.items()):
            why = self._liveness.gone(worker, now)
            if why is None:
                by_worker.setdefault(worker, []).append(attempt)
            else:
                del self._started[attempt]
                gone.setdefault(worker, (why, []))[1].append(attempt)
        for why, attempts in gone.values():
            log.warning(
                "%s while it ran %d aexec task(s) (%s): unless Celery redelivers them "
                "(acks_late), they are lost and sent again after the coordinator's "
                "worker_timeout",
                why,
                len(attempts),
                ", ".join(f"step {key} of run {run_id}" for run_id, key, _ in attempts[:5]),
            )
        return by_worker

    async def _listen_events(
        self, connection: AbstractRobustConnection
    ) -> AbstractRobustChannel | None:
        """Consume the ``worker.*`` events of Celery's event exchange into a queue of this
        gateway's own (deleted with its connection); None, with a warning, where that
        exchange cannot be used (then no worker is ever taken for gone)."""
        channel = await connection.channel()
        try:
            exchange = await channel.declare_exchange(
                self.config.event_exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(
                self._events_queue,
                exclusive=True,
                auto_delete=True,
                arguments={"x-message-ttl": 10_000},
            )
            await queue.bind(exchange, "worker.#")
            await queue.consume(self._on_event, no_ack=True)
        except aiormq.exceptions.ChannelClosed as exc:  # refused, or declared otherwise
            log.warning(
                "cannot listen to Celery's worker events on exchange %r (%s): a task lost "
                "with its Celery worker will not be noticed",
                self.config.event_exchange,
                exc,
            )
            with contextlib.suppress(*_BROKER_ERRORS):
                await channel.close()
            return None
        self._liveness.listening(time.monotonic())
        return channel

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        try:
            event = protocol.worker_event(
                protocol.loads(message.body, message.content_type, message.content_encoding)
            )
        except CodecError as exc:
            log.debug("ignored a malformed Celery event: %s", exc)
            return
        if event is not None:
            kind, hostname, freq = event
            self._liveness.heard(hostname, kind, time.monotonic(), freq)

    async def _listen_redis(self) -> None:
        """Results from a Redis backend: the channels of aexec's tasks, and, on every
        (re)subscription, the keys of those sent here that have no result yet."""
        import redis.asyncio
        import redis.exceptions

        url, keys = self.config.redis
        delay = 0.1
        while True:
            client = redis.asyncio.Redis.from_url(url)
            pubsub = client.pubsub()  # a connection of its own
            try:
                await pubsub.psubscribe(f"{keys}aexec.*")
                await self._fetch_stored(client)
                delay = 0.1
                async for message in pubsub.listen():
                    if message.get("type") == "pmessage":
                        channel = message["channel"]
                        if isinstance(channel, bytes):
                            channel = channel.decode()
                        tid = channel.removeprefix(keys)
                        await self._on_redis_result(tid, message["data"])
            except (redis.exceptions.RedisError, OSError) as exc:
                log.warning(
                    "lost the Redis backend at %s (%s); reconnecting",
                    redact(self.config.backend),
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                await _close_redis(pubsub, client)

    async def _fetch_stored(self, client: Any = None) -> None:
        """Read the results already stored for the tasks sent (or vouched for) here that
        have none yet: those that ended while nobody listened."""
        import redis.asyncio
        import redis.exceptions

        url, keys = self.config.redis
        own = client is None
        if own:
            client = redis.asyncio.Redis.from_url(url)
        try:
            for tid in list(self._pending):
                stored = await client.get(f"{keys}{tid}")
                if stored is not None:
                    await self._on_redis_result(tid, stored)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("cannot read stored Celery results: %s", exc)  # the listener retries
        finally:
            if own:
                await client.aclose()

    async def _on_redis_result(self, tid: str, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        try:
            meta = protocol.loads(raw, protocol.JSON)
            result = protocol.TaskResult.from_meta(meta, tid)
        except CodecError as exc:
            log.error("ignored a malformed Celery result for task %s: %s", tid, exc)
            return
        body = await self._translate(result)
        if body is not None:
            self._posted(Reply(Announcement(body)))


def from_settings(settings: Settings, objects: ObjectStore) -> CeleryGateway | None:
    """The gateway that ``settings`` ask for: to ``celery_broker``, else to ``broker``
    when it is RabbitMQ (aexec's own ``prefix``/``connect_timeout`` options taken off the
    URL); None without either.  The URL's ``event_exchange`` query parameter names Celery's
    event exchange (default ``celeryev``)."""
    if not gateway_wanted(settings):
        return None
    broker = settings.celery_broker
    prefix = settings.queue_prefix
    if broker is None:  # aexec's own broker, RabbitMQ
        parts = urlsplit(settings.broker or "")
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefix = dict(query).get("prefix", prefix)
        rest = [(k, v) for k, v in query if k not in ("prefix", "connect_timeout")]
        broker = urlunsplit(parts._replace(query=urlencode(rest)))
    parts = urlsplit(broker)
    query = parse_qsl(parts.query, keep_blank_values=True)
    event_exchange = dict(query).get("event_exchange") or EVENT_EXCHANGE
    rest = [(k, v) for k, v in query if k != "event_exchange"]
    broker = urlunsplit(parts._replace(query=urlencode(rest)))
    config = CeleryConfig(
        broker,
        settings.celery_backend,
        event_exchange=event_exchange,
        prefix=prefix,
        inline_threshold=settings.inline_threshold,
        max_value_size=settings.max_value_size,
        heartbeat_interval=settings.heartbeat_interval,
    )
    return CeleryGateway(config, objects)


async def _close_redis(pubsub: Any, client: Any) -> None:
    """Close a Redis listener's connections even if the task is cancelled again meanwhile
    (a second cancel used to leave a socket to the garbage collector)."""

    async def close() -> None:
        with contextlib.suppress(Exception):
            await pubsub.aclose()
        with contextlib.suppress(Exception):
            await client.aclose()

    closing = asyncio.ensure_future(close())
    try:
        await asyncio.shield(closing)
    except asyncio.CancelledError:
        await asyncio.wait([closing])  # finish closing, then stop as asked
        raise


__all__ = ["KIND", "CeleryConfig", "CeleryGateway", "from_settings"]
