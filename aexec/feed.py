"""What a remote client is sent of its runs.

A client that submitted through the broker (``--remote``, ``Executor(remote=True)``) gives
a queue; the coordinator driving the run sends every event of it there as it is recorded
(:meth:`ClientFeed.notify`), and the events recorded so far to a client that asks for them
(:meth:`ClientFeed.send_events`, through :mod:`aexec.client_requests`).  A run's result
rides on its ``run_succeeded`` (the event log keeps no values: the run's row does); events
too large for one message go in several, and a result too large for any goes to the
object store as a claim check (:mod:`aexec.claim`).
"""

from __future__ import annotations

import logging

from aexec import claim, messages
from aexec.batch import ActiveRun
from aexec.errors import ObjectStoreError, StoreError, TransportError, ValueTooLargeError
from aexec.events import Event, EventKind, to_record
from aexec.objects import ObjectStore
from aexec.store import Store
from aexec.transport import Transport

log = logging.getLogger(__name__)


class ClientFeed:
    """Sends remote clients their runs' events from ``store`` through ``transport`` (no
    message over ``max_message_size``; larger values go to ``objects``)."""

    def __init__(
        self,
        store: Store,
        transport: Transport,
        objects: ObjectStore | None,
        max_message_size: int,
    ) -> None:
        self._store = store
        self._transport = transport
        self._objects = objects
        self._max_message_size = max_message_size

    async def notify(self, run: ActiveRun, events: list[Event]) -> None:
        """Send a remote client its run's events.  After a send failed (the client is gone,
        or its queue is, until it reconnects) only the run's end is sent, with the whole
        log before it, so that a client that comes back learns how its run ended."""
        if run.notify is None:
            return
        if run.notify_lost:
            if not any(event.kind.ends_run for event in events):
                return
            try:
                events = await self._history(run.run_id)
            except StoreError as exc:
                log.warning("cannot read the events of run %s: %s", run.run_id, exc)
        try:
            await self._send(run.run_id, run.notify, events)
        except TransportError as exc:
            if not run.notify_lost:
                log.info("cannot send run %s its events for now: %s", run.run_id, exc)
            run.notify_lost = True
        else:
            run.notify_lost = False

    async def send_events(self, run_id: str, queue: str) -> None:
        """Send the events of run ``run_id`` recorded so far to a client's ``queue`` (a
        client that missed its run's end asks for them); a queue gone is no error."""
        events = await self._history(run_id)
        if not events:
            return
        try:
            await self._send(run_id, queue, events)
        except TransportError as exc:
            log.info("cannot send run %s its events: %s", run_id, exc)

    async def _history(self, run_id: str) -> list[Event]:
        """The events of run ``run_id`` as its client receives them: as logged, and the
        run's result with its run_succeeded (the log keeps no values; the run's row does)."""
        events = await self._store.get_events(run_id)
        if events and events[-1].kind is EventKind.RUN_SUCCEEDED:
            record = await self._store.get_run(run_id)
            if record is not None and record.run_id == run_id:
                events[-1].output = record.result
        return events

    async def _send(self, run_id: str, queue: str, events: list[Event]) -> None:
        """Publish ``events`` of run ``run_id`` to a client's ``queue``.  Events that would
        make a message too large go in several (and a result too large for any goes to the
        object store, as a claim check)."""
        records = [to_record(e) for e in events]
        body = messages.Events(run_id, records).encode()
        if len(body) <= self._max_message_size:
            bodies = [body]
        else:
            try:
                batches = await claim.event_batches(
                    self._objects, run_id, records, self._max_message_size
                )
            except (ObjectStoreError, ValueTooLargeError) as exc:
                log.error("cannot send run %s its events: %s", run_id, exc)
                return
            bodies = [messages.Events(run_id, batch).encode() for batch in batches]
        for body in bodies:
            await self._transport.publish(queue, body)


__all__ = ["ClientFeed"]
