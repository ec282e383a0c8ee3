"""The campaign's own hands on the broker, beside aexec: it publishes poison and
duplicates, watches what aexec publishes, and reads the dead-letter queue.

* **Capture.** RabbitMQ's firehose (``rabbitmqctl trace_on``) copies every published
  message to ``amq.rabbitmq.trace``; a queue of ours bound to it keeps the latest step
  messages, completions and submissions, byte for byte, so a duplicate is exactly what the
  system itself could deliver twice.
* **Publish.** A confirmed, mandatory publish to a named queue through the default exchange.
* **Dead letters.** Every message that reaches aexec's dead-letter queue is taken off it,
  fingerprinted (sha256 of the body) and described, so that the checker can tell the
  poison the campaign injected from innocent messages.

Queue names are the broker's (``<prefix>.<logical name>``): the campaign knows aexec only
by what it puts on the wire, so that the engine can change underneath it.  The connection
is robust: after a broker restart or closed connections it comes back by itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq.exceptions
import pamqp.exceptions
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from aexec import messages, transport
from aexec.errors import CodecError
from benchmarks.faults.model import DeadLetter

log = logging.getLogger(__name__)

PREFIX = "aexec"
SUBMIT_QUEUE = f"{PREFIX}.coordinator.submit"
DEAD_LETTER_QUEUE = f"{PREFIX}.{transport.DEAD_LETTER_QUEUE}"
REPLY_PREFIX = f"{PREFIX}.reply."
STEP_PREFIX = f"{PREFIX}.step."
TRACE_QUEUE = "faults.trace"
TRACE_EXCHANGE = "amq.rabbitmq.trace"

CAPTURE_LIMIT = 1024 * 1024  # larger messages are not kept for duplicating
KEEP = 300  # captured messages kept per kind (the most recent ones)
PUBLISH_TIMEOUT = 10.0

_BROKER_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    pamqp.exceptions.PAMQPException,
    OSError,
    TimeoutError,
    RuntimeError,
)


class WireError(RuntimeError):
    """The broker did not take a message (it is away, or nothing was routed)."""


@dataclass(frozen=True, slots=True)
class Captured:
    """A message aexec published: where to, its bytes and properties, and what it is."""

    queue: str
    body: bytes
    priority: int
    headers: dict[str, Any]
    kind: str  # "step", "completion" or "submit"
    run_id: str
    step: str | None = None
    attempt: int | None = None

    def describe(self) -> str:
        what = f"{self.kind} of run {self.run_id}"
        if self.step is not None:
            what += f" step {self.step} attempt {self.attempt}"
        return f"{what} to {self.queue}"


def describe(body: bytes) -> str:
    """What a message body is, as far as it decodes: for reports."""
    try:
        msg = messages.decode(body)
    except CodecError as exc:
        return f"{len(body)} bytes that do not decode ({str(exc)[:80]})"
    if isinstance(msg, messages.StepMessage):
        return f"step message of run {msg.run_id} step {msg.step_key} attempt {msg.attempt}"
    if isinstance(msg, messages.Completion):
        outcome = "succeeded" if msg.error is None else f"failed ({msg.error.type})"
        return (
            f"completion of run {msg.run_id} step {msg.step_key} attempt {msg.attempt} "
            f"({outcome}, from {msg.worker})"
        )
    if isinstance(msg, messages.Completions):
        first = msg.items[0]
        return (
            f"{len(msg.items)} coalesced completions, the first of run {first.run_id} step "
            f"{first.step_key} attempt {first.attempt} (from {first.worker})"
        )
    if isinstance(msg, messages.Submit):
        return f"submission of run {msg.run_id[:40]} ({len(msg.run_id)}-character id)"
    return f"{type(msg).__name__} message"


def _classify(queue: str, body: bytes, properties: dict[str, Any]) -> Captured | None:
    try:
        msg = messages.decode(body)
    except CodecError:
        return None
    priority = int(properties.get("priority") or 0)
    headers = dict(properties.get("headers") or {})
    if isinstance(msg, messages.StepMessage):
        return Captured(
            queue, body, priority, headers, "step", msg.run_id, msg.step_key, msg.attempt
        )
    if isinstance(msg, messages.Completion):
        return Captured(
            queue, body, priority, headers, "completion", msg.run_id, msg.step_key, msg.attempt
        )
    if isinstance(msg, messages.Completions):  # coalesced: replayed whole, named by its first
        item = msg.items[0]
        return Captured(
            queue, body, priority, headers, "completion", item.run_id, item.step_key, item.attempt
        )
    if isinstance(msg, messages.Submit):
        return Captured(queue, body, priority, headers, "submit", msg.run_id)
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Wire:
    """``async with Wire(url)``: capture, publish and dead-letter reading on one robust
    connection; its background task is cancelled and awaited on exit."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: AbstractRobustConnection | None = None
        self._publisher: aio_pika.abc.AbstractChannel | None = None
        self._captured: dict[str, collections.deque[Captured]] = {
            kind: collections.deque(maxlen=KEEP) for kind in ("step", "completion", "submit")
        }
        self.dead_letters: list[DeadLetter] = []
        self._dead_letter_reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Wire:
        connection = await aio_pika.connect_robust(self.url, reconnect_interval=0.5, timeout=10)
        self._connection = connection
        try:
            self._publisher = await connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            tracer = await connection.channel()
            trace = await tracer.declare_queue(
                TRACE_QUEUE,
                durable=False,
                arguments={"x-max-length": 5000, "x-overflow": "drop-head"},
            )
            await trace.bind(TRACE_EXCHANGE, "publish.#")
            await trace.consume(self._on_trace, no_ack=True)
        except BaseException:
            await connection.close()
            raise
        self._dead_letter_reader = asyncio.get_running_loop().create_task(
            self._read_dead_letters(), name="faults-dead-letters"
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        reader, self._dead_letter_reader = self._dead_letter_reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.wait([reader])
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(*_BROKER_ERRORS):
                await connection.close()

    # -- capture ---------------------------------------------------------------------------

    async def _on_trace(self, message: AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        if _text(headers.get("exchange_name", "")) != "":
            return
        keys = headers.get("routing_keys") or []
        if not isinstance(keys, list) or not keys or len(message.body) > CAPTURE_LIMIT:
            return
        queue = _text(keys[0])
        if not queue.startswith(PREFIX + "."):
            return
        properties = headers.get("properties")
        captured = _classify(
            queue, message.body, properties if isinstance(properties, dict) else {}
        )
        if captured is not None:
            self._captured[captured.kind].append(captured)

    def captured(self, kind: str) -> list[Captured]:
        """The latest messages of ``kind`` (``step``, ``completion``, ``submit``) seen."""
        return list(self._captured[kind])

    # -- publish ---------------------------------------------------------------------------

    async def publish(
        self,
        queue: str,
        body: bytes,
        *,
        priority: int = 0,
        headers: dict[str, Any] | None = None,
        within: float = PUBLISH_TIMEOUT,
    ) -> None:
        """Publish ``body`` to broker queue ``queue``; once the broker confirms it, it is
        queued.  Retries while the broker is away, for at most ``within`` seconds; then
        (or when no queue has that name) raises WireError."""
        channel = self._publisher
        if channel is None:
            raise WireError("the campaign's broker connection is not open")
        message = aio_pika.Message(
            body,
            priority=priority,
            headers=headers or {},
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        deadline = asyncio.get_running_loop().time() + within
        while True:
            try:
                await channel.default_exchange.publish(
                    message, routing_key=queue, mandatory=True, timeout=PUBLISH_TIMEOUT
                )
                return
            except aiormq.exceptions.PublishError as exc:
                raise WireError(f"no queue {queue!r}: the message was not routed") from exc
            except _BROKER_ERRORS as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise WireError(f"cannot publish to {queue!r}: {exc!r}") from exc
                await asyncio.sleep(0.5)

    # -- dead letters ----------------------------------------------------------------------

    async def _read_dead_letters(self) -> None:
        """Consume the dead-letter queue from the moment aexec has declared it."""
        connection = self._connection
        assert connection is not None
        while True:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(DEAD_LETTER_QUEUE, passive=True)
                await queue.consume(self._on_dead_letter)
                return
            except _BROKER_ERRORS:
                with contextlib.suppress(*_BROKER_ERRORS):
                    await channel.close()
                await asyncio.sleep(0.5)

    async def _on_dead_letter(self, message: AbstractIncomingMessage) -> None:
        deaths = (message.headers or {}).get("x-death")
        queue, reason = "?", "?"
        if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
            queue = _text(deaths[0].get("queue", "?"))
            reason = _text(deaths[0].get("reason", "?"))
        body = message.body
        self.dead_letters.append(
            DeadLetter(hashlib.sha256(body).hexdigest(), queue, reason, describe(body))
        )
        with contextlib.suppress(*_BROKER_ERRORS):
            await message.ack()

    async def dead_letters_drained(self, count: Any, within: float) -> bool:
        """Wait (at most ``within`` s) until ``count()`` — the dead-letter queue's depth on
        the broker — is 0; True if it got there."""
        deadline = asyncio.get_running_loop().time() + within
        while asyncio.get_running_loop().time() < deadline:
            if await count() == 0:
                return True
            await asyncio.sleep(0.5)
        return False


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
