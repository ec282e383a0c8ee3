"""How a coordinator hears of cancel requests, and honours them whenever it drives the run.

A cancel is durable (:func:`aexec.control.cancel_run`): it is recorded in the store and
broadcast on :data:`~aexec.wire.COORDINATOR_TOPIC`.  The run's coordinator acts on the
broadcast at once (a :class:`~aexec.inbox.Cancel` to its scheduler); a broadcast for a run
not driven here is remembered (the newest :data:`HEARD_CANCELS`), since this coordinator
may create or take the run over a moment later; a run created or taken over looks for a
request in the store; and the lease renewal looks again for the runs it keeps
(:meth:`Cancels.requested`), in case a broadcast was missed.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from aexec import messages
from aexec.batch import ActiveRun
from aexec.errors import CodecError, StoreError, TransportError
from aexec.inbox import Cancel
from aexec.transport import Delivery
from aexec.wire import COORDINATOR_TOPIC

if TYPE_CHECKING:
    from aexec.coordinator import Coordinator

log = logging.getLogger(__name__)

HEARD_CANCELS = 10_000
"""Broadcast cancels of runs not driven here that a coordinator remembers, at most."""


class Cancels:
    """The cancel requests of ``coordinator``'s runs (see the module docstring)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator
        # Cancels broadcast for runs not driven here (yet): a run this coordinator starts
        # or takes over a moment later is cancelled all the same.  The newest kept.
        self._heard: collections.OrderedDict[str, str | None] = collections.OrderedDict()

    async def on_command(self, delivery: Delivery) -> None:
        """The handler of :data:`~aexec.wire.COORDINATOR_TOPIC`."""
        try:
            msg = messages.decode(delivery.body)
        except CodecError as exc:
            log.warning("coordinator ignored a malformed command: %s", exc)
            return
        if not isinstance(msg, messages.Control) or msg.command != "cancel":
            return
        if msg.run_id is None:
            return
        if msg.run_id in self._coordinator.runs:
            self._coordinator.post(Cancel(msg.run_id, msg.reason))
            return
        heard = self._heard
        heard[msg.run_id] = msg.reason
        while len(heard) > HEARD_CANCELS:
            heard.popitem(last=False)

    def heard_for(self, run: ActiveRun) -> None:
        """``run`` is driven here from now on: a cancel heard for it meanwhile applies."""
        if run.run_id in self._heard:
            reason = self._heard.pop(run.run_id)
            if run.cancel is None:
                run.cancel = reason or ""

    async def recorded_for(self, run: ActiveRun) -> None:
        """``run`` was just created from a client's submission: its client may have asked
        to cancel it before (the submission was still queued), and then it is cancelled
        instead of started.  A request recorded after this read is broadcast once the run
        is driven here."""
        try:
            requests = await self._coordinator.store.cancel_requests([run.run_id])
        except StoreError as exc:  # the lease renewal looks again
            log.warning("could not read the cancel requests of run %s: %s", run.run_id, exc)
            return
        if run.run_id in requests:
            run.cancel = requests[run.run_id] or ""

    async def cancel(self, run_id: str, reason: str | None = None) -> None:
        """See :meth:`Coordinator.cancel <aexec.coordinator.Coordinator.cancel>`."""
        coordinator = self._coordinator
        driven = run_id in coordinator.runs
        if driven:
            coordinator.post(Cancel(run_id, reason))
        else:
            command = messages.Control("cancel", run_id=run_id, reason=reason)
            try:
                await coordinator.transport.broadcast(COORDINATOR_TOPIC, command.encode())
            except TransportError as exc:  # recorded below: found at the next renewal
                log.warning("could not pass on the cancel request of run %s: %s", run_id, exc)
        await coordinator.store.request_cancel(run_id, reason)
        if not driven and run_id in coordinator.runs:  # it started here meanwhile
            coordinator.post(Cancel(run_id, reason))

    async def requested(self, run_ids: Iterable[str]) -> None:
        """Cancel those of ``run_ids`` driven here that have a cancel request in the store
        and are not being cancelled yet."""
        runs = self._coordinator.runs
        wanted = [
            run_id
            for run_id in run_ids
            if (run := runs.get(run_id)) is not None
            and run.cancel is None
            and not run.state.finished
        ]
        if not wanted:
            return
        for run_id, reason in (await self._coordinator.store.cancel_requests(wanted)).items():
            run = runs.get(run_id)
            if run is not None and run.cancel is None:
                run.cancel = reason or ""
                self._coordinator.post(Cancel(run_id, reason))


__all__ = ["HEARD_CANCELS", "Cancels"]
