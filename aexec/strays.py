"""Replies about runs a coordinator does not drive: forwarded, never acked and dropped.

A completion, progress report or heartbeat reaches a coordinator's reply queue (or an old
reply queue it consumes since a takeover) for a run it does not drive: the run was taken
over by another coordinator, ended here already, or is being taken over right now.  The
message still matters to whoever drives the run, so :class:`Strays` looks the runs up in
the store (one read per batch) and settles each message by who owns its run:

* the run ended: ack it (nothing needs it any more);
* another coordinator holds a live lease on it: publish the message to that coordinator's
  reply queue (confirmed), then ack it;
* nobody holds it (the lease ended and nobody claimed it yet), or this coordinator claimed
  it and has not taken it over yet: hand it back to its queue after a short delay, growing
  per run (bounded), so that it comes back once somebody drives the run;
* the run does not exist: dead-letter it.

A heartbeat names the attempts a worker runs for every run of one reply queue: its entries
for runs driven elsewhere are forwarded to their owners as heartbeats of their own; the
others are dropped (the worker sends another within its heartbeat interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from aexec import messages
from aexec.errors import StoreError, TransportError
from aexec.store import Ownership, Store
from aexec.transport import Delivery, Transport, settle
from aexec.wire import reply_queue

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Stray:
    """A reply about a run this coordinator does not drive: a completion, a progress report
    or a lost attempt with its delivery (unacked), or a heartbeat's entries for such runs (its
    delivery was acked with the rest of the heartbeat: ``delivery`` is None)."""

    msg: messages.Completion | messages.Progress | messages.AttemptLost | messages.Heartbeat
    delivery: Delivery | None = None

    @property
    def run_ids(self) -> Iterable[str]:
        msg = self.msg
        if isinstance(msg, messages.Heartbeat):
            return (run_id for run_id, _, _ in msg.running)
        return (msg.run_id,)


class Strays:
    """Settles stray replies for coordinator ``owner`` (see the module docstring): hands
    back after ``delay`` seconds at first, doubling per run up to ``max_delay``."""

    def __init__(
        self, store: Store, transport: Transport, owner: str, delay: float, max_delay: float
    ) -> None:
        self._store = store
        self._transport = transport
        self._owner = owner
        self._delay = delay
        self._max_delay = max(delay, max_delay)
        self._delays: dict[str, float] = {}  # run id → its next hand-back delay

    async def handle(self, strays: list[Stray]) -> None:
        """Settle ``strays`` as their runs' owners say; returns once each is settled (after
        the hand-back delay, for those handed back)."""
        run_ids = {run_id for stray in strays for run_id in stray.run_ids}
        try:
            owners = await self._store.owners(run_ids)
        except StoreError as exc:
            log.warning("coordinator %s cannot look up stray replies: %s", self._owner, exc)
            held = [s for s in strays if s.delivery is not None]  # heartbeats: dropped
            await self._hand_back(
                [s.delivery for s in held if s.delivery is not None],
                {run_id for s in held for run_id in s.run_ids},
            )
            return
        back: list[Delivery] = []
        waiting: set[str] = set()
        for stray in strays:
            msg, delivery = stray.msg, stray.delivery
            if isinstance(msg, messages.Heartbeat):
                await self._forward_heartbeat(msg, owners)
                continue
            assert delivery is not None
            owner = owners.get(msg.run_id)
            if owner is None:
                log.error(
                    "coordinator %s dead-lettered a %s for unknown run %r",
                    self._owner,
                    type(msg).__name__,
                    msg.run_id,
                )
                await settle(delivery, reject=True, reason=f"reply for unknown run {msg.run_id!r}")
            elif owner.status.finished or (
                self._elsewhere(owner) and await self._forward(owner, delivery.body)
            ):
                self._delays.pop(msg.run_id, None)
                await settle(delivery)
            else:
                back.append(delivery)
                waiting.add(msg.run_id)
        if back:
            await self._hand_back(back, waiting)

    def _elsewhere(self, owner: Ownership) -> bool:
        return owner.live and owner.owner is not None and owner.owner != self._owner

    async def _forward(self, owner: Ownership, body: bytes) -> bool:
        assert owner.owner is not None
        try:
            await self._transport.publish(reply_queue(owner.owner), body)
        except TransportError as exc:
            log.info(
                "coordinator %s could not forward a reply to %s: %s", self._owner, owner.owner, exc
            )
            return False
        return True

    async def _forward_heartbeat(
        self, msg: messages.Heartbeat, owners: dict[str, Ownership]
    ) -> None:
        by_owner: dict[str, list[tuple[str, str, int]]] = {}
        for entry in msg.running:
            owner = owners.get(entry[0])
            if owner is not None and not owner.status.finished and self._elsewhere(owner):
                assert owner.owner is not None
                by_owner.setdefault(owner.owner, []).append(entry)
        for coordinator, running in by_owner.items():
            body = messages.Heartbeat(msg.worker, msg.ts, running, msg.instance).encode()
            with contextlib.suppress(TransportError):
                await self._transport.publish(reply_queue(coordinator), body)

    async def _hand_back(self, deliveries: list[Delivery], run_ids: Iterable[str]) -> None:
        """Requeue ``deliveries`` after the longest delay of their runs (and grow those)."""
        delay = self._delay
        for run_id in run_ids:
            current = self._delays.get(run_id, self._delay)
            delay = max(delay, current)
            self._delays[run_id] = min(current * 2, self._max_delay)
        if not deliveries:
            return
        await asyncio.sleep(delay)
        for delivery in deliveries:
            await settle(delivery, requeue=True)


__all__ = ["Stray", "Strays"]
