"""The coordinator's side of run admission and step limits: which of its runs start now
and which wait ``queued`` (:mod:`aexec.admission`), and the rate-limit tokens it takes
from the store for the steps that wait for them (:mod:`aexec.limits`).

The decisions are pure and live in those modules; this is their plumbing.  A run that
admission lets in, and tokens that the store grants, reach the scheduler through the
coordinator's inbox (:class:`~aexec.inbox.Start`, :class:`~aexec.inbox.TokensGranted`),
so that the steps they release go out in a scheduler pass like any other.  With no limit
and no admission configured, none of this costs anything on the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from aexec.admission import Admission, AdmissionPolicy, Candidate
from aexec.batch import Batch
from aexec.errors import AexecError, StoreError
from aexec.inbox import Queued, Start, TokensDue, TokensGranted, UnfreedDue
from aexec.limits import Limiter, Rate
from aexec.store import SlotFree

if TYPE_CHECKING:
    from aexec.coordinator import Coordinator

log = logging.getLogger(__name__)

SLOT_RETRY = 0.25
"""Seconds before a step the store refused the slots of its caps asks again."""


def _attempts_ended(batch: Batch) -> list[SlotFree]:
    """Take out of ``batch`` the frees of attempts' slots, leaving those of whole runs."""
    frees = batch.slot_frees
    if not frees:
        return []
    ended = [free for free in frees if free.step is not None]
    if len(ended) == len(frees):
        batch.slot_frees = []
    elif ended:
        batch.slot_frees = [free for free in frees if free.step is None]
    return ended


class Throttle:
    """Admission and limits for ``coordinator``'s runs, as its config sets them."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator
        config = coordinator.config
        self.limiter = Limiter(config.limits)
        policy = AdmissionPolicy(
            config.max_concurrent_runs, config.run_limits, config.admission_aging
        )
        self.admission = Admission(policy) if policy.limited else None
        self._unfreed: list[SlotFree] = []  # slots the store could not free in a pass

    # -- runs ------------------------------------------------------------------------------

    def start_or_queue(self, candidate: Candidate) -> bool:
        """Start the run of ``candidate`` (driven here, not started) if admission lets it,
        else queue it; True if it starts."""
        admission = self.admission
        post = self._coordinator.post
        if admission is None or admission.offer(candidate, time.time()):
            post(Start(candidate.run_id))
            return True
        position = admission.position(candidate.run_id, time.time()) or 1
        post(Queued(candidate.run_id, position))
        return False

    def start_now(self, candidate: Candidate) -> None:
        """Start the run of ``candidate`` at once, counted by admission even over its caps:
        a child run, part of the work of a parent admitted already (queued behind it, it
        could wait forever)."""
        if self.admission is not None:
            self.admission.occupy(candidate)
        self._coordinator.post(Start(candidate.run_id))

    def admit_after(self, run_ids: list[str]) -> None:
        """These runs ended or left: start the queued runs that admission lets in now."""
        admission = self.admission
        if admission is None:
            return
        now = time.time()
        for run_id in run_ids:
            for admitted in admission.finished(run_id, now):
                self._coordinator.post(Start(admitted))

    # -- steps -----------------------------------------------------------------------------

    def let_go(self, batch: Batch, run_id: str) -> None:
        """Run ``run_id`` is no longer driven here: its steps hold no limit any more, and
        the steps they held back may go (in ``batch``)."""
        batch.admitted(self.limiter.forget_run(run_id), batch.now)
        self.limiter.slots.pop(run_id, None)  # its attempts keep their slots in the store

    def granted(self, batch: Batch, item: TokensGranted) -> None:
        """Tokens came from the store: the steps they let go go out with ``batch``; the
        store's advice on when to ask again is a timer."""
        # The loop's clock, which the coordinator's timers run on: on another one (uvloop's
        # counts whole milliseconds) the timer could wake a pass just before the gate is
        # due, that pass would not ask, and nothing would wake another.
        batch.tokens(item, asyncio.get_running_loop().time())
        if item.retry_in > 0:
            self._coordinator.after(item.retry_in, TokensDue())

    def request_tokens(self) -> None:
        """Ask the store for the tokens the rate limits with waiting steps need (each
        request a task of the coordinator's; the answer comes back through its inbox)."""
        if not self.limiter:
            return
        now = asyncio.get_running_loop().time()  # the clock granted() times against
        for gate, want in self.limiter.token_requests(now):
            assert gate.rate is not None
            with contextlib.suppress(AexecError):  # stopping
                self._coordinator.start_work(self._take_tokens(gate.name, gate.rate, want))

    async def sync_slots(self, batch: Batch) -> None:
        """Free and take in the store, in one call, the slots of caps that ``batch`` decided
        (and those an earlier pass could not free), before its steps go out: the steps
        given theirs go out with ``batch``; a step refused asks again in a moment (other
        coordinators hold the slots; they free them when their attempts end)."""
        coordinator = self._coordinator
        takes = batch.wanted_takes()
        # The slots of an attempt that ended are free whatever this pass's commit does
        # (the attempt is over); those of a run that ended are freed once that end is
        # recorded (:meth:`ended`): were the run lost to another coordinator meanwhile,
        # they would be those its new driver took.
        frees = _attempts_ended(batch)
        if self._unfreed:
            frees[:0], self._unfreed = self._unfreed, []
        if not (frees or takes):
            return
        store = coordinator.store
        asked = [take for take, _ in takes]
        try:
            granted = await coordinator.with_retry(
                "take and free limit slots", lambda: store.sync_slots(frees, asked)
            )
        except StoreError as exc:  # nothing taken nor freed: the next passes try again
            log.error(
                "coordinator %s cannot take and free limit slots: %s", coordinator.config.id, exc
            )
            self._unfreed, granted = frees, [False] * len(takes)
        for (take, index), given in zip(takes, granted, strict=True):
            due = batch.slots_taken(take, index, given)
            if due is not None:
                coordinator.after(SLOT_RETRY, due)
        self._unfreed.extend(_attempts_ended(batch))  # given to steps that did not want them
        if self._unfreed:
            coordinator.after(SLOT_RETRY, UnfreedDue())

    def ended(self, batch: Batch) -> None:
        """``batch`` is recorded (its runs lost to other coordinators taken out of it): the
        slots of its runs that ended are freed by the next pass, at once."""
        if batch.slot_frees:
            self._unfreed.extend(batch.slot_frees)
            batch.slot_frees = []
            self._coordinator.post(UnfreedDue())

    async def _take_tokens(self, gate: str, rate: Rate, want: int) -> None:
        coordinator = self._coordinator
        try:
            granted, retry_in = await coordinator.with_retry(
                "take tokens", lambda: coordinator.store.take_tokens(gate, rate, want)
            )
        except StoreError as exc:
            log.error(
                "coordinator %s cannot take tokens of %s: %s", coordinator.config.id, gate, exc
            )
            granted, retry_in = 0, coordinator.config.retry_backoff_max
        coordinator.post(TokensGranted(gate, granted, retry_in))


__all__ = ["Throttle"]
