"""Commits that wait for a pass that needs them: the events of scheduler passes that decide
nothing to send.

A scheduler pass commits its events before it publishes what they made ready, so that a
step's dependents go out only once its completion is durable.  A pass that makes nothing
ready — one of the first completions of a layer whose join waits for ten — has no such
reason to commit at once.  :class:`Deferral` holds its events and the deliveries that
carried them (unacked, so the broker gives them back if the coordinator dies: nothing is
lost), until the next pass that has something to publish, to end or to time (they are
committed first, in the same transaction), or for at most ``delay`` seconds.  Each commit
blocks the event loop and each ack is a socket write, so on a layer of ten steps whose
completions arrive in several messages this takes two or three commits off the path from
a layer's last completion to the next layer's dispatch.

Nothing else changes: what is held is recorded exactly as it would have been, in the same
order, fenced by the same transaction; a run lost to another coordinator meanwhile has its
held events dropped with the batch's, its deliveries forwarded to its owner as strays.

It is not free: a reply RabbitMQ holds unacked is a persistent message it must write to
disk before it confirms it to its worker, where one acked at once never reaches the disk.
That pays where a commit costs more than that — PostgreSQL, a network round trip and a WAL
flush per commit — and not with SQLite's commits of a fraction of a millisecond (measured
in BENCHMARKS.md, issue 15): :func:`default_delay` is the store's default.
"""

from __future__ import annotations

import asyncio
import math
import time

from aexec import messages
from aexec.batch import Batch
from aexec.events import Event
from aexec.transport import Delivery

MAX_HELD = 500
"""Deliveries held at most (well under the reply queue's prefetch: the broker keeps
delivering meanwhile)."""

POSTGRES_DELAY = 0.01
"""The default commit delay with a PostgreSQL store (seconds)."""


def default_delay(store_url: str | None) -> float:
    """The commit delay for a store at ``store_url`` when none is configured:
    :data:`POSTGRES_DELAY` for PostgreSQL, 0 (every pass commits) for the others."""
    scheme = (store_url or "").partition(":")[0].lower()
    return POSTGRES_DELAY if scheme in ("postgresql", "postgres") else 0.0


Ack = tuple[Delivery, messages.Completion | messages.Progress | messages.AttemptLost | None]


class Deferral:
    """The events and deliveries of passes that committed nothing yet, for ``delay``
    seconds at most (0: every pass commits)."""

    __slots__ = ("_emptied", "acks", "armed", "delay", "events", "since")

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.events: list[Event] = []
        self.acks: list[Ack] = []
        self.since = 0.0  # monotonic time the oldest held event was held
        self.armed = False  # a CommitDue timer is set
        self._emptied = asyncio.Event()  # set while nothing is held
        self._emptied.set()

    def __bool__(self) -> bool:
        return bool(self.events or self.acks)

    @property
    def run_ids(self) -> set[str]:
        """The runs whose events are held."""
        return {event.run_id for event in self.events}

    def hold(self, batch: Batch, *, commit: bool) -> bool:
        """Take ``batch``'s events and deliveries to commit later, if nothing it decided
        needs them committed first and its caller does not want a ``commit`` now (it is
        closing, confirmed dispatches are due); True if held (the caller arms the timer
        when :attr:`armed` is False, for :meth:`remaining` seconds)."""
        if (
            self.delay <= 0
            or commit
            or not (batch.events or self)
            or batch.outgoing
            or batch.finished
            or batch.retries
            or len(self.acks) + len(batch.acks) > MAX_HELD
        ):
            return False
        now = time.monotonic()
        if not self:
            self.since = now
        elif now - self.since >= self.delay:
            return False
        self.events.extend(batch.events)
        self.acks.extend(batch.acks)
        batch.events, batch.acks = [], []
        if self:
            self._emptied.clear()
        return True

    def expire(self) -> None:
        """Make what is held due now: the next pass commits it."""
        self.since = -math.inf

    async def emptied(self) -> None:
        """Return once nothing is held (committed, or dropped)."""
        await self._emptied.wait()

    def remaining(self) -> float:
        """Seconds until what is held is due."""
        return max(0.0, self.since + self.delay - time.monotonic())

    def release_into(self, batch: Batch) -> None:
        """Put what is held in front of ``batch``'s own (it is recorded and acked with it)."""
        if self:
            batch.events[:0] = self.events
            batch.acks[:0] = self.acks
            self.events, self.acks = [], []
        self._emptied.set()

    def drop(self) -> list[Ack]:
        """Forget the held events (their runs are rebuilt from the store); return the held
        deliveries, to hand back to the broker."""
        acks, self.acks, self.events = self.acks, [], []
        self._emptied.set()
        return acks


__all__ = ["MAX_HELD", "POSTGRES_DELAY", "Deferral", "default_delay"]
