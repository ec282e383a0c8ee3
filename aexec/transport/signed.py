"""Signed messages: a transport decorator that signs every body it publishes and verifies
every body before a handler sees it.

With ``AEXEC_SECRET`` set, the composition root wraps the broker's transport in
:class:`SignedTransport` (:func:`aexec.transport.from_url` does), so every message aexec
publishes (step messages, completions, progress, heartbeats, control and broadcast
messages, submissions, client events, worker info) carries an HMAC-SHA256, and every
consumer rejects what does not verify:

* a queue delivery that is unsigned or badly signed is dead-lettered with the reason
  (``unsigned message`` or ``bad signature``) and never reaches the handler;
* a broadcast (auto-acked) that does not verify is dropped;
* either way it is logged (never with the secret), and every rejection listener
  (:meth:`SignedTransport.on_reject`) hears of it with the unverified body, so that a
  coordinator can put an error event on a run the body names.

Framing of a signed body::

    0xC1 "S1"  tag (32 bytes)  payload

``0xC1`` is the one byte msgpack never uses, so an unsigned msgpack body (every aexec
message starts with an array header) can never be taken for a signed one, and a signed body
never decodes as msgpack by accident (a consumer without the secret refuses it as
malformed).  ``tag = HMAC-SHA256(key, "S1" || destination || 0x00 || payload)`` where
``destination`` is ``q:<queue>``, ``t:<topic>`` or ``r:<retained topic>`` (logical names,
as the port takes them): a signed message verifies only where it was sent, so it cannot be
replayed onto another queue or topic.  ``key`` is derived from the secret (HMAC-SHA256 of a
fixed label), so the same secret used elsewhere (webhooks) yields unrelated tags.  Tags are
compared in constant time.

Dead letters keep the body as it arrived (signed): replaying one to its original queue
(:meth:`~aexec.transport.Transport.replay_dead_letters`) verifies again there, and an
unsigned one is refused again.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from aexec.errors import PublishError
from aexec.transport import DeadLetter, Delivery, Handler, Replay, Subscription, Transport
from aexec.wire import MAX_PRIORITY

log = logging.getLogger(__name__)

MAGIC = b"\xc1S1"
TAG_SIZE = hashlib.sha256().digest_size
HEADER_SIZE = len(MAGIC) + TAG_SIZE
_KEY_LABEL = b"aexec message signing v1"

UNSIGNED = "unsigned message"
BAD_SIGNATURE = "bad signature"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A body that did not verify.  ``body`` is its unverified payload (the framing taken
    off when there was one): for a listener to read, never to trust.  ``destination`` is
    ``"queue NAME"`` or ``"topic NAME"``."""

    destination: str
    reason: str
    body: bytes


RejectionListener = Callable[[Rejection], Awaitable[None] | None]


def derive_key(secret: str) -> bytes:
    """The HMAC key of messages signed with ``secret``."""
    return hmac.new(secret.encode(), _KEY_LABEL, hashlib.sha256).digest()


def sign(key: bytes, destination: str, payload: bytes) -> bytes:
    """``payload`` framed and signed for ``destination`` (``q:<queue>`` or ``t:<topic>``)."""
    return MAGIC + _tag(key, destination, payload) + payload


def verify(key: bytes, destination: str, body: bytes) -> tuple[bytes | None, str]:
    """``(payload, "")`` if ``body`` is signed with ``key`` for ``destination``; else
    ``(None, reason)``."""
    if not body.startswith(MAGIC) or len(body) < HEADER_SIZE:
        return None, UNSIGNED
    payload = body[HEADER_SIZE:]
    if not hmac.compare_digest(body[len(MAGIC) : HEADER_SIZE], _tag(key, destination, payload)):
        return None, BAD_SIGNATURE
    return payload, ""


def unframe(body: bytes) -> bytes:
    """The payload of ``body`` without checking its tag (an unsigned body as it is): for
    displaying dead letters and for rejection listeners, never for acting on."""
    return body[HEADER_SIZE:] if body.startswith(MAGIC) and len(body) >= HEADER_SIZE else body


def _tag(key: bytes, destination: str, payload: bytes) -> bytes:
    mac = hmac.new(key, MAGIC[1:], hashlib.sha256)
    mac.update(destination.encode())
    mac.update(b"\x00")
    mac.update(payload)
    return mac.digest()


class _VerifiedDelivery:
    """A delivery whose body verified: the handler sees the payload; settling goes to the
    broker's delivery (a dead letter keeps the signed body)."""

    __slots__ = ("_delivery", "body")

    def __init__(self, delivery: Delivery, payload: bytes) -> None:
        self._delivery = delivery
        self.body = payload

    @property
    def redelivered(self) -> bool:
        return self._delivery.redelivered

    async def ack(self) -> None:
        await self._delivery.ack()

    async def reject(self, requeue: bool = False, *, reason: str | None = None) -> None:
        await self._delivery.reject(requeue, reason=reason)


class SignedTransport:
    """``inner`` with every published body signed and every consumed one verified."""

    def __init__(self, inner: Transport, secret: str) -> None:
        self.inner = inner
        self._key = derive_key(secret)
        self._listeners: list[RejectionListener] = []

    def __repr__(self) -> str:
        return f"SignedTransport({self.inner!r})"

    def on_reject(self, listener: RejectionListener) -> None:
        """Call ``listener`` with every :class:`Rejection`, after the delivery is settled."""
        self._listeners.append(listener)

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def declare_queue(
        self,
        name: str,
        *,
        max_priority: int = MAX_PRIORITY,
        durable: bool = True,
        auto_delete: bool = False,
    ) -> None:
        await self.inner.declare_queue(
            name, max_priority=max_priority, durable=durable, auto_delete=auto_delete
        )

    async def publish(self, queue: str, body: bytes, *, priority: int = 0) -> None:
        await self.inner.publish(queue, sign(self._key, f"q:{queue}", body), priority=priority)

    async def publish_many(self, messages: Sequence[tuple[str, bytes, int]]) -> None:
        signed = [(q, sign(self._key, f"q:{q}", b), p) for q, b, p in messages]
        try:
            await self.inner.publish_many(signed)
        except PublishError as exc:
            # The caller knows its messages, not their signed bodies: name its own unsent.
            originals = {
                id(body): message for (_, body, _), message in zip(signed, messages, strict=True)
            }
            unsent = [originals[id(body)] for _, body, _ in exc.unsent if id(body) in originals]
            raise PublishError(str(exc), unsent) from exc

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> Subscription:
        destination = f"q:{queue}"

        async def verified(delivery: Delivery) -> None:
            payload, reason = verify(self._key, destination, delivery.body)
            if payload is not None:
                await handler(_VerifiedDelivery(delivery, payload))
                return
            log.error("dead-lettered a message on queue %r: %s", queue, reason)
            await delivery.reject(requeue=False, reason=reason)
            await self._rejected(Rejection(f"queue {queue}", reason, unframe(delivery.body)))

        return await self.inner.consume(queue, verified, prefetch=prefetch)

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        await self.inner.ack_many(
            [d._delivery if isinstance(d, _VerifiedDelivery) else d for d in deliveries]
        )

    async def delete_queues(self, names: Iterable[str]) -> None:
        await self.inner.delete_queues(names)

    async def queue_depths(self, names: Iterable[str]) -> dict[str, int]:
        return await self.inner.queue_depths(names)

    async def broadcast(self, topic: str, body: bytes) -> None:
        await self.inner.broadcast(topic, sign(self._key, f"t:{topic}", body))

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        destination = f"t:{topic}"

        async def verified(delivery: Delivery) -> None:
            payload, reason = verify(self._key, destination, delivery.body)
            if payload is not None:
                await handler(_VerifiedDelivery(delivery, payload))
                return
            log.error("dropped a broadcast on topic %r: %s", topic, reason)
            await self._rejected(Rejection(f"topic {topic}", reason, unframe(delivery.body)))

        return await self.inner.subscribe(topic, verified)

    async def announce(self, topic: str, body: bytes) -> None:
        await self.inner.announce(topic, sign(self._key, f"r:{topic}", body))

    async def follow(self, topic: str, handler: Handler) -> Subscription:
        """Announcements that do not verify are dropped (they are settled already) and
        reported to the rejection listeners."""
        destination = f"r:{topic}"

        async def verified(delivery: Delivery) -> None:
            payload, reason = verify(self._key, destination, delivery.body)
            if payload is not None:
                await handler(_VerifiedDelivery(delivery, payload))
                return
            log.error("dropped an announcement on retained topic %r: %s", topic, reason)
            await self._rejected(Rejection(f"topic {topic}", reason, unframe(delivery.body)))

        return await self.inner.follow(topic, verified)

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetter]:
        return await self.inner.dead_letters(limit=limit)

    async def replay_dead_letters(self, ids: Collection[str] | None = None) -> list[Replay]:
        """Bodies go back as they were dead-lettered (signed ones still signed): a replayed
        message verifies again at its queue, or is refused again."""
        return await self.inner.replay_dead_letters(ids)

    async def _rejected(self, rejection: Rejection) -> None:
        for listener in self._listeners:
            try:
                outcome = listener(rejection)
                if outcome is not None:
                    await outcome
            except Exception:
                log.exception("a rejection listener failed")


__all__ = [
    "BAD_SIGNATURE",
    "HEADER_SIZE",
    "MAGIC",
    "UNSIGNED",
    "Rejection",
    "SignedTransport",
    "derive_key",
    "sign",
    "unframe",
    "verify",
]
