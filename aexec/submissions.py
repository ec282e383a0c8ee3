"""Runs submitted by library clients through the broker, as a coordinator service takes
them in.

A submission (:class:`~aexec.messages.Submit`) starts its run once, however often it is
delivered: a run the store knows already is not created again.  One that the store or the
broker cannot take *now* (a database blip, a broker fault) goes back to the queue after a
backoff, growing per run, and is taken again, by this coordinator or another.  One refused
for good — undecodable, a bad plan, an absurd run id, a run the store refuses — is
dead-lettered, and its client is told: its run fails with that error (a ``run_failed``
event sent to the client's queue), instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from aexec import messages
from aexec.errors import (
    AexecError,
    CodecError,
    PlanError,
    StoreError,
    StoreUnavailableError,
    TransportError,
)
from aexec.events import Event, EventKind, to_record
from aexec.plan import Plan
from aexec.recording import one_line
from aexec.transport import Delivery, Subscription, settle
from aexec.wire import SUBMIT_QUEUE, check_run_id

if TYPE_CHECKING:
    from aexec.coordinator import Coordinator

log = logging.getLogger(__name__)

PREFETCH = 16
"""Submissions one coordinator takes in at once."""


class Submissions:
    """The submission queue, as ``coordinator`` consumes it (see the module docstring)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator
        self._subscription: Subscription | None = None
        self._delays: dict[str, float] = {}  # run id → its next backoff before retaking

    async def accept(self) -> None:
        """Start consuming the submission queue (idempotent)."""
        if self._subscription is None:
            transport = self._coordinator.transport
            await transport.declare_queue(SUBMIT_QUEUE, max_priority=0)
            self._subscription = await transport.consume(
                SUBMIT_QUEUE, self.on_submit, prefetch=PREFETCH
            )

    async def stop(self) -> None:
        """Take no more submissions (unacked ones go back to the queue)."""
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            await subscription.cancel()

    async def on_submit(self, delivery: Delivery) -> None:
        coordinator = self._coordinator
        try:
            msg = messages.decode(delivery.body)
            if not isinstance(msg, messages.Submit):
                raise CodecError(f"expected a submission, got a {type(msg).__name__} message")
        except CodecError as exc:
            log.error(
                "coordinator %s dead-lettered a bad submission: %s", coordinator.config.id, exc
            )
            await settle(delivery, reject=True, reason=f"bad submission: {exc}")
            return
        try:
            plan = Plan.from_bytes(msg.plan)
            check_run_id(msg.run_id)
        except (CodecError, PlanError) as exc:
            await self._refuse(delivery, msg, str(exc))
            return
        try:
            if not await self._known(msg.run_id):
                await coordinator.create(
                    plan,
                    msg.priority,
                    msg.run_id,
                    msg.notify,
                    tags=msg.tags,
                    parent=msg.parent,
                    from_failure=msg.from_failure,
                )
        except (StoreUnavailableError, TransportError) as exc:
            self._take_again(delivery, msg.run_id, exc)
            return
        except StoreError as exc:
            with contextlib.suppress(StoreError):
                if await self._known(msg.run_id):  # created meanwhile by another coordinator
                    await settle(delivery)
                    return
            await self._refuse(delivery, msg, str(exc))
            return
        self._delays.pop(msg.run_id, None)
        await settle(delivery)

    async def _known(self, run_id: str) -> bool:
        coordinator = self._coordinator
        return run_id in coordinator.runs or bool(await coordinator.store.owners([run_id]))

    def _take_again(self, delivery: Delivery, run_id: str, exc: Exception) -> None:
        """Give a submission back to its queue after a backoff (growing per run)."""
        config = self._coordinator.config
        delay = self._delays.get(run_id, config.retry_backoff)
        self._delays[run_id] = min(delay * 2, config.retry_backoff_max)
        log.warning(
            "coordinator %s will take submission %s again in %.2fs: %s",
            config.id,
            run_id,
            delay,
            exc,
        )

        async def later() -> None:
            await asyncio.sleep(delay)
            with contextlib.suppress(TransportError):
                await delivery.reject(requeue=True)

        with contextlib.suppress(AexecError):  # stopping: unacked, it goes back anyway
            self._coordinator.start_work(later())

    async def _refuse(self, delivery: Delivery, msg: messages.Submit, reason: str) -> None:
        """Dead-letter a submission refused for good, and tell its client why: its run
        fails with that error."""
        reason = one_line(reason)
        coordinator = self._coordinator
        log.error(
            "coordinator %s dead-lettered submission %r: %s",
            coordinator.config.id,
            msg.run_id[:80],
            reason,
        )
        await settle(delivery, reject=True, reason=f"submission refused: {reason}")
        if msg.notify is None:
            return
        refused = Event(
            EventKind.RUN_FAILED,
            msg.run_id,
            time.time(),
            data={"error": f"submission refused: {reason}"},
        )
        body = messages.Events(msg.run_id, [to_record(refused)]).encode()
        try:
            await coordinator.transport.publish(msg.notify, body)
        except TransportError as exc:
            log.info("could not tell the client of run %r: %s", msg.run_id[:80], exc)


__all__ = ["PREFETCH", "Submissions"]
