"""Following a run's event log as it grows: the loop every store adapter shares.

An adapter supplies a :class:`LogWatch` (how it learns that the log may have changed:
an in-process wake-up, ``LISTEN``, polling) and two reads; the table stays the truth, a
wake-up only says when to read it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from typing import Protocol

from aexec.events import Event


class LogWatch(Protocol):
    def arm(self) -> None:
        """Called before each read of the log: a change after it must wake :meth:`wait`."""

    async def wait(self) -> None:
        """Return once the log may have changed since :meth:`arm` (or after a fallback
        interval: returning early only costs a read)."""


class Wakeups:
    """In-process wake-ups for the followers of each run.

    A follower takes a ticket (an :class:`asyncio.Event`) before it reads the log and waits
    on it afterwards; :meth:`notify` sets the run's current ticket and starts a new one, so
    a change between the read and the wait is never lost.
    """

    def __init__(self) -> None:
        self._tickets: dict[str, asyncio.Event] = {}

    def ticket(self, run_id: str) -> asyncio.Event:
        ticket = self._tickets.get(run_id)
        if ticket is None:
            ticket = self._tickets[run_id] = asyncio.Event()
        return ticket

    def notify(self, run_id: str) -> None:
        ticket = self._tickets.pop(run_id, None)
        if ticket is not None:
            ticket.set()

    def notify_all(self) -> None:
        tickets, self._tickets = self._tickets, {}
        for ticket in tickets.values():
            ticket.set()


class TicketWatch:
    """A :class:`LogWatch` on one run's :class:`Wakeups` tickets; with ``interval``, a wait
    also ends after that many seconds (for adapters whose wake-ups can be missed)."""

    def __init__(self, wakeups: Wakeups, run_id: str, interval: float | None = None) -> None:
        self._wakeups = wakeups
        self._run_id = run_id
        self._interval = interval
        self._ticket = asyncio.Event()

    def arm(self) -> None:
        self._ticket = self._wakeups.ticket(self._run_id)

    async def wait(self) -> None:
        await wait_for_ticket(self._ticket, self._interval)


async def wait_for_ticket(ticket: asyncio.Event, interval: float | None) -> bool:
    """Wait until ``ticket`` is set (True) or ``interval`` seconds have passed (False)."""
    with suppress(TimeoutError):
        async with asyncio.timeout(interval):
            await ticket.wait()
    return ticket.is_set()


async def follow_log(
    watch: LogWatch,
    read: Callable[[int], Awaitable[list[Event]]],
    finished: Callable[[], Awaitable[bool]],
    *,
    after: int,
) -> AsyncIterator[Event]:
    """Yield what ``read(after=last seq)`` returns as the log grows, until the run's ending
    event, or until ``finished()`` (is the run over?) and nothing is left to read.

    ``finished()`` is asked only after a read came back empty, and the log is read once
    more when it says yes: the ending event commits with the run's status, so it cannot be
    missed between the two reads.
    """
    last = after
    while True:
        watch.arm()
        events = await read(last)
        for event in events:
            yield event
            last = event.seq
            if event.kind.ends_run:
                return
        if events:
            continue
        if await finished():
            for event in await read(last):
                yield event
                if event.kind.ends_run:
                    return
            return
        await watch.wait()
