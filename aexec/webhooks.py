"""Webhooks: a signed HTTP POST when a run ends, delivered from an outbox in the store.

Configured in aexec.yaml as ``webhooks: [{url, events: [run_failed, ...], secret}]``
(:class:`~aexec.config.Webhook`).  When a coordinator records a run's ending event it
writes, in the same transaction, one :class:`~aexec.store.WebhookDelivery` per webhook
subscribed to that event (:meth:`Webhooks.outbox`): the decision to notify survives a crash
and is never taken twice.  A :class:`Deliverer` — one per coordinator process, running
beside the scheduler and never in its way — leases due deliveries from the store, POSTs
them, and records each attempt: 2xx is delivered; anything else (an error status, a
timeout, a refused connection) is tried again with exponential backoff, and given up after
:attr:`WebhookPolicy.max_attempts`.  A deliverer that dies mid-call leaves its lease to end;
another takes the delivery over, so an endpoint may receive one notification more than once
(at least once, never lost): the ``Aexec-Delivery`` header is the same each time.

Each call carries::

    Content-Type: application/json
    Aexec-Event: run_failed
    Aexec-Delivery: <delivery id>
    Aexec-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">

as Stripe signs its webhooks; :func:`verify` checks one (a receiver should also refuse a
``t`` too far from its own clock).  The body::

    {"id": ..., "event": "run_failed", "run_id": ..., "pipeline": ..., "status": "failed",
     "error": "failed steps: ...", "ts": <when the run ended>}
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aexec.background import Background
from aexec.config import Webhook
from aexec.errors import StoreError
from aexec.events import Event
from aexec.redaction import redact
from aexec.store import Attempted, Store, WebhookDelivery

if TYPE_CHECKING:
    import aiohttp

    from aexec.batch import ActiveRun

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Aexec-Signature"
MAX_ERROR = 500
"""Characters of an attempt's error (or response body) kept with the delivery."""


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    """How deliveries are retried: attempt ``n`` (from 1) that fails waits
    ``min(backoff * 2**(n-1), backoff_max)`` (with up to 10 % jitter); the ``max_attempts``-th
    failure gives up.  ``concurrency`` bounds the calls in flight; ``rescan`` is how often
    the store is looked at for deliveries other coordinators left behind (seconds)."""

    max_attempts: int = 8
    backoff: float = 1.0
    backoff_max: float = 600.0
    concurrency: int = 8
    rescan: float = 10.0

    def next_at(self, attempts: int, now: float) -> float | None:
        """When to try again after ``attempts`` failed attempts (None: give up)."""
        if attempts >= self.max_attempts:
            return None
        delay = min(self.backoff * 2.0 ** (attempts - 1), self.backoff_max)
        return now + delay * (1.0 + 0.1 * random.random())


def sign(secret: str, body: bytes, ts: int) -> str:
    """The ``Aexec-Signature`` header value of ``body`` sent at ``ts`` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def verify(secret: str, body: bytes, header: str, *, tolerance: float = 300.0) -> bool:
    """True if ``header`` signs ``body`` with ``secret`` and its time is within
    ``tolerance`` seconds of now: what a receiver checks."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        ts = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - ts) > tolerance:
        return False
    expected = sign(secret, body, ts).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def delivery_id(run_id: str, url: str, event: str) -> str:
    """The id of the one delivery of ``event`` of run ``run_id`` to ``url``."""
    return hashlib.sha256(f"{run_id}\0{url}\0{event}".encode()).hexdigest()[:32]


class Webhooks:
    """The configured webhooks of a coordinator: which deliveries its ending events make
    (:meth:`outbox`), and a way to tell its deliverer there is something new."""

    def __init__(self, hooks: Sequence[Webhook]) -> None:
        self.hooks = tuple(hooks)
        self._wake = asyncio.Event()

    def outbox(
        self, events: Sequence[Event], runs: Mapping[str, ActiveRun]
    ) -> list[WebhookDelivery]:
        """The deliveries that ``events`` decide (one per ending event and subscribed
        webhook); ``runs`` names their pipelines."""
        found: list[WebhookDelivery] = []
        for event in events:
            if not event.kind.ends_run:
                continue
            kind = str(event.kind)
            hooks = [hook for hook in self.hooks if kind in hook.events]
            if not hooks:
                continue
            run = runs.get(event.run_id)
            pipeline = run.plan.pipeline if run is not None else None
            now = time.time()
            for hook in hooks:
                id_ = delivery_id(event.run_id, hook.url, kind)
                body = {
                    "id": id_,
                    "event": kind,
                    "run_id": event.run_id,
                    "pipeline": pipeline,
                    "status": kind.removeprefix("run_"),
                    "error": event.data.get("error"),
                    "ts": event.ts,
                }
                found.append(
                    WebhookDelivery(
                        id_,
                        event.run_id,
                        hook.url,
                        kind,
                        json.dumps(body, default=str).encode(),
                        now,
                        now,
                    )
                )
        return found

    def wake(self) -> None:
        """New deliveries were recorded: the deliverer looks now."""
        self._wake.set()

    async def wait(self, seconds: float) -> None:
        """Until :meth:`wake` is called or ``seconds`` pass."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._wake.wait()
        self._wake.clear()


class Deliverer:
    """Sends the due deliveries of ``store`` to ``webhooks``, as ``owner`` (a lease per
    delivery, by default 5 s longer than the slowest webhook's timeout).  ``async with``
    runs it; leaving gives what is due ``grace`` seconds to be sent (a short-lived
    ``aexec run`` delivers its run's webhook before it exits)."""

    def __init__(
        self,
        store: Store,
        webhooks: Webhooks,
        owner: str,
        policy: WebhookPolicy | None = None,
        *,
        grace: float = 5.0,
        lease: float | None = None,
    ) -> None:
        self.store = store
        self.webhooks = webhooks
        self.owner = owner
        self.policy = policy or WebhookPolicy()
        self.grace = grace
        self._by_url = {hook.url: hook for hook in webhooks.hooks}
        # A lease outlasts the longest call: nobody else takes a delivery being sent.
        longest = max((hook.timeout for hook in webhooks.hooks), default=10.0)
        self.lease = longest + 5.0 if lease is None else lease
        self._background = Background(f"webhooks {owner}")
        self._session: aiohttp.ClientSession | None = None
        self._in_flight = 0

    async def __aenter__(self) -> Deliverer:
        import aiohttp

        self._session = aiohttp.ClientSession(headers={"User-Agent": "aexec-webhooks"})
        try:
            await self._background.__aenter__()
        except BaseException:
            await self._session.close()
            raise
        self._background.start_loop(self._run(), name=f"aexec-webhooks-{self.owner}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            with contextlib.suppress(TimeoutError, StoreError):
                async with asyncio.timeout(self.grace):
                    await self.send_due()
                    await self._background.drain()
        finally:
            try:
                await self._background.aclose()
            finally:
                if self._session is not None:
                    await self._session.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.send_due()
                soonest = await self.store.next_delivery_at()
            except StoreError as exc:
                log.warning("webhooks: cannot read the outbox (trying again): %s", exc)
                soonest = None
            if soonest is None or self._in_flight >= self.policy.concurrency:
                wait = self.policy.rescan  # a delivery that ends wakes it
            else:
                wait = min(soonest - time.time(), self.policy.rescan)
            await self.webhooks.wait(wait)

    async def send_due(self) -> None:
        """Take the due deliveries (as many as the concurrency leaves room for) and start
        sending them."""
        room = self.policy.concurrency - self._in_flight
        if room <= 0:
            return
        claimed = await self.store.claim_deliveries(
            self.owner, self.lease, now=time.time(), limit=room
        )
        for delivery in claimed:
            self._in_flight += 1
            self._background.start_work(self._deliver(delivery))

    async def _deliver(self, delivery: WebhookDelivery) -> None:
        try:
            outcome = await self._attempt(delivery)
            try:
                await self.store.settle_delivery(delivery.id, self.owner, outcome)
            except StoreError as exc:  # its lease ends, and it is sent again
                log.warning("webhooks: cannot record delivery %s: %s", delivery.id, exc)
                return
            _log_outcome(delivery, outcome)
        finally:
            self._in_flight -= 1
            self.webhooks.wake()  # room for the next, and retries to schedule

    async def _attempt(self, delivery: WebhookDelivery) -> Attempted:
        import aiohttp

        hook = self._by_url.get(delivery.url)
        attempts = delivery.attempts + 1
        if hook is None:
            return Attempted(False, time.time(), None, error="webhook no longer configured")
        assert self._session is not None
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Aexec-Event": delivery.event,
            "Aexec-Delivery": delivery.id,
            SIGNATURE_HEADER: sign(hook.secret, delivery.body, ts),
        }
        try:
            async with self._session.post(
                hook.url,
                data=delivery.body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=hook.timeout),
                allow_redirects=False,
            ) as response:
                status = response.status
                text = (await response.text(errors="replace"))[:MAX_ERROR]
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            now = time.time()
            why = f"no answer within {hook.timeout:g} s" if isinstance(exc, TimeoutError) else exc
            return Attempted(False, now, self.policy.next_at(attempts, now), error=_clip(why))
        now = time.time()
        if 200 <= status < 300:
            return Attempted(True, now, None, status)
        error = _clip(f"HTTP {status}: {text}".strip())
        return Attempted(False, now, self.policy.next_at(attempts, now), status, error)


def _clip(value: object) -> str:
    return " ".join(str(value).split())[:MAX_ERROR]


def _log_outcome(delivery: WebhookDelivery, outcome: Attempted) -> None:
    where = redact(delivery.url)
    if outcome.delivered:
        log.info("webhook %s of run %s delivered to %s", delivery.event, delivery.run_id, where)
    elif outcome.next_at is None:
        log.error(
            "webhook %s of run %s to %s given up: %s",
            delivery.event,
            delivery.run_id,
            where,
            outcome.error,
        )
    else:
        log.warning(
            "webhook %s of run %s to %s failed (trying again in %.1fs): %s",
            delivery.event,
            delivery.run_id,
            where,
            outcome.next_at - outcome.ts,
            outcome.error,
        )


def describe(delivery: WebhookDelivery) -> dict[str, Any]:
    """A delivery as ``runs show --json`` and ``runs logs --json`` print it (no body)."""
    return {
        "id": delivery.id,
        "url": redact(delivery.url),
        "event": delivery.event,
        "status": str(delivery.status),
        "attempts": delivery.attempts,
        "created_at": delivery.created_at,
        "next_at": delivery.next_at,
        "finished_at": delivery.finished_at,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
    }


__all__ = [
    "SIGNATURE_HEADER",
    "Deliverer",
    "WebhookPolicy",
    "Webhooks",
    "delivery_id",
    "describe",
    "sign",
    "verify",
]
