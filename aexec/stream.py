"""A run's event stream as a coordinator serves it: history from the store, then live
events as they are committed, through a bounded buffer per reader.

The coordinator hands every committed event of a run it drives to that run's
:class:`Subscriber` buffers.  A reader that stops iterating does not make its buffer grow
without bound: past :data:`BUFFER` events the buffer is emptied and marked *behind*, and
the reader, when it comes back, catches up from the store by ``seq`` — no event lost, none
twice (the store is the source of truth; the buffer only saves reads).  A run the
coordinator stops driving because another one took it over is followed on in the store
until it ends.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable

from aexec.events import Event
from aexec.store import Store

BUFFER = 1000
"""Events one reader may have pending before it falls behind and reads the store instead."""


class Subscriber:
    """The live events of one run for one reader: at most ``limit`` pending."""

    __slots__ = ("_events", "_wake", "behind", "closed", "limit", "taken_over")

    def __init__(self, limit: int = BUFFER) -> None:
        self.limit = limit
        self._events: collections.deque[Event] = collections.deque()
        self._wake = asyncio.Event()
        self.behind = False  # events were dropped: read the store from the last seq seen
        self.closed = False  # no more live events
        self.taken_over = False  # closed because another coordinator drives the run now

    def __len__(self) -> int:
        """Events pending: at most ``limit``."""
        return len(self._events)

    def put(self, event: Event) -> None:
        """A committed event of the run (never blocks, never grows past ``limit``)."""
        if self.behind or self.closed:
            return
        if len(self._events) >= self.limit:
            self._events.clear()
            self.behind = True
        else:
            self._events.append(event)
        self._wake.set()

    def close(self, *, taken_over: bool = False) -> None:
        """No more live events: the run ended, or the coordinator stopped driving it."""
        self.closed = True
        self.taken_over = taken_over
        self._wake.set()

    async def next(self) -> Event | None:
        """The next buffered event; None once the buffer is empty and the subscriber is
        behind or closed (the caller looks at which)."""
        while True:
            if self._events:
                return self._events.popleft()
            if self.behind or self.closed:
                return None
            self._wake.clear()
            await self._wake.wait()


async def run_events(
    store: Store,
    run_id: str,
    subscribe: Callable[[str], Subscriber | None],
    unsubscribe: Callable[[str, Subscriber], None],
) -> AsyncIterator[Event]:
    """Every event of ``run_id`` from the beginning, until its ending event: history from
    the store, then the live events of a ``subscribe``\\ d buffer (None if the run is not
    driven here).  Ends early if the coordinator stops driving the run for any reason but
    a takeover; after a takeover the store is followed until the run ends."""
    live = subscribe(run_id)
    try:
        last = 0
        for event in await store.get_events(run_id):
            yield event
            last = event.seq
            if event.kind.ends_run:
                return
        if live is None:
            return
        while True:
            pending = await live.next()
            if pending is not None:
                if pending.seq > last:
                    yield pending
                    last = pending.seq
                    if pending.kind.ends_run:
                        return
                continue
            if live.behind:
                # Everything committed before now is in the store; what commits from here
                # on goes to the buffer again (the overlap is skipped by seq).
                live.behind = False
                for event in await store.get_events(run_id, after=last):
                    yield event
                    last = event.seq
                    if event.kind.ends_run:
                        return
                continue
            if live.taken_over:
                rest = store.follow(run_id, after=last)
                try:
                    async for event in rest:
                        yield event
                finally:
                    aclose = getattr(rest, "aclose", None)
                    if aclose is not None:
                        await aclose()
            return
    finally:
        if live is not None:
            unsubscribe(run_id, live)


__all__ = ["BUFFER", "Subscriber", "run_events"]
