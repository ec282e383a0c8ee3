"""Requests from clients that have no store, as a coordinator service takes them in.

A library client of a coordinator service publishes :class:`~aexec.messages.Control`
messages to the durable :data:`~aexec.wire.REQUEST_QUEUE`, where they wait while no
coordinator runs; every coordinator service consumes it:

- ``cancel`` (``run_id``, ``reason``; :func:`aexec.control.cancel_run`): the request is
  recorded in the store and passed on to the run's coordinator (:meth:`Coordinator.cancel
  <aexec.coordinator.Coordinator.cancel>`), which honours it whenever it drives the run;
- ``events`` (``run_id``, ``reply_to``): the run's events recorded so far are sent to the
  client's queue ``reply_to``, as the run's coordinator sends them (a client that learns a
  run ended without having its end, :data:`~aexec.wire.RUNS_ENDED_TOPIC`, catches up).

A request is acked once done; one that cannot be done now (the store is unavailable) goes
back to the queue after a backoff.  A malformed request is dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from aexec import messages
from aexec.errors import AexecError, CodecError, StoreError, TransportError
from aexec.transport import Delivery, Subscription, settle
from aexec.wire import REQUEST_QUEUE, check_run_id

if TYPE_CHECKING:
    from aexec.coordinator import Coordinator

log = logging.getLogger(__name__)

PREFETCH = 16
"""Requests one coordinator takes in at once."""

COMMANDS = ("cancel", "events")
"""The commands a client may send on the request queue."""


class ClientRequests:
    """The request queue, as ``coordinator`` consumes it (see the module docstring)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator
        self._subscription: Subscription | None = None
        self._delay = coordinator.config.retry_backoff

    async def accept(self) -> None:
        """Start consuming the request queue (idempotent)."""
        if self._subscription is None:
            transport = self._coordinator.transport
            await transport.declare_queue(REQUEST_QUEUE, max_priority=0)
            self._subscription = await transport.consume(
                REQUEST_QUEUE, self.on_request, prefetch=PREFETCH
            )

    async def stop(self) -> None:
        """Take no more requests (unacked ones go back to the queue)."""
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            await subscription.cancel()

    async def on_request(self, delivery: Delivery) -> None:
        coordinator = self._coordinator
        try:
            msg = messages.decode(delivery.body)
            if not isinstance(msg, messages.Control) or msg.command not in COMMANDS:
                raise CodecError(f"expected a client request, got {msg!r:.80}")
            run_id = check_run_id(msg.run_id)
            if msg.command == "events" and msg.reply_to is None:
                raise CodecError("a request for events names no queue to send them to")
        except CodecError as exc:
            log.error("coordinator %s dead-lettered a bad request: %s", coordinator.config.id, exc)
            await settle(delivery, reject=True, reason=f"bad request: {exc}")
            return
        try:
            if msg.command == "cancel":
                await coordinator.cancel(run_id, msg.reason)
            elif msg.reply_to is not None:
                await coordinator.send_events(run_id, msg.reply_to)
        except StoreError as exc:
            self._take_again(delivery, f"{msg.command} {run_id}", exc)
            return
        self._delay = coordinator.config.retry_backoff
        await settle(delivery)

    def _take_again(self, delivery: Delivery, what: str, exc: Exception) -> None:
        """Give a request back to its queue after a backoff (growing while they fail)."""
        config = self._coordinator.config
        delay, self._delay = self._delay, min(self._delay * 2, config.retry_backoff_max)
        log.warning(
            "coordinator %s will take request %r again in %.2fs: %s", config.id, what, delay, exc
        )

        async def later() -> None:
            await asyncio.sleep(delay)
            with contextlib.suppress(TransportError):
                await delivery.reject(requeue=True)

        with contextlib.suppress(AexecError):  # stopping: unacked, it goes back anyway
            self._coordinator.start_work(later())


__all__ = ["COMMANDS", "PREFETCH", "ClientRequests"]
