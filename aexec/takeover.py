"""Run leases of one coordinator: renewing them, and taking runs over.

A coordinator owns each run it drives through a lease in the store, at an epoch (see
:mod:`aexec.store`).  :class:`Leases` renews the leases of exactly the runs the coordinator
drives, by id and epoch, and lets go of those the store no longer gives it: another
coordinator took them over after this one's lease ended.  The runs to renew are read
*before* the renewal, so a run submitted while it is under way is never taken for lost.

A coordinator service (``adopt``) also claims the runs whose coordinators stopped renewing
and takes them over: it rebuilds each run's schedule from the store, consumes what is
still waiting in the old coordinator's reply queue, and carries on.  A run claimed but not
taken over (a store or broker blip half-way) is released at once, and is not renewed: its
lease lapses if the release fails, and it is claimed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from aexec import claim
from aexec.admission import Candidate
from aexec.batch import ActiveRun
from aexec.errors import ConfigError, ObjectStoreError, StoreError, TransportError
from aexec.events import Event, EventKind
from aexec.inbox import Resume
from aexec.plan import CHILD, NATIVE, Plan
from aexec.scheduling import Action, RecordedStep, RunState
from aexec.store import Fence, RunRecord, fold
from aexec.transport import Subscription
from aexec.types import RunStatus, StepStatus
from aexec.wire import reply_queue

if TYPE_CHECKING:
    from aexec.coordinator import Coordinator

log = logging.getLogger(__name__)


class Leases:
    """The leases and takeovers of ``coordinator`` (which owns the runs; this renews them)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator
        self.adopting: set[str] = set()  # claimed by this coordinator, not taken over yet
        self._adopted: dict[str, set[str]] = {}  # old reply queue → runs taken over from it
        self._subscriptions: dict[str, Subscription] = {}

    async def keep(self) -> None:
        """Renew the leases every third of a lease; with ``adopt``, then take over the runs
        whose coordinators stopped renewing.  Backend errors are retried at the next turn."""
        config = self._coordinator.config
        while True:
            await asyncio.sleep(config.lease / 3)
            try:
                await self.renew()
                if config.adopt:
                    await self.take_over()
            except (StoreError, TransportError, ObjectStoreError) as exc:
                log.warning("coordinator %s could not keep its leases: %s", config.id, exc)

    async def renew(self) -> None:
        """Renew the lease of every run driven now; let go of those another coordinator
        took over (the store no longer gives them to this one at the epoch it holds)."""
        coordinator = self._coordinator
        runs = coordinator.runs
        # Before the call; a run whose creation is not committed yet has no lease to renew.
        held = {run_id: run.epoch for run_id, run in runs.items() if run.creation is None}
        if not held:
            return
        config = coordinator.config
        kept = await coordinator.store.renew_leases(config.id, config.lease, held)
        for run_id, epoch in held.items():
            run = runs.get(run_id)
            lost = run_id not in kept and run is not None and run.epoch == epoch
            if lost and run is not None and not run.state.finished:
                await coordinator.lose(run)
        # A cancel request whose broadcast this coordinator missed is honoured now.
        await coordinator.cancel_requested(kept)

    async def take_over(self) -> None:
        """Claim the runs whose leases ended and take each over; release at once those
        that could not be taken over."""
        coordinator = self._coordinator
        config = coordinator.config
        records = await coordinator.store.acquire_runs(config.id, config.lease)
        claimed = {record.run_id for record in records}
        self.adopting |= claimed
        taken: set[str] = set()
        try:
            for record in records:
                stale = coordinator.runs.get(record.run_id)
                if stale is not None:  # this coordinator's own lease had lapsed
                    await coordinator.lose(stale)
                try:
                    if await self.adopt(record) is not None:
                        taken.add(record.run_id)
                except (StoreError, TransportError, ObjectStoreError) as exc:
                    log.warning(
                        "coordinator %s could not take over run %s: %s",
                        config.id,
                        record.run_id,
                        exc,
                    )
                finally:
                    self.adopting.discard(record.run_id)
        finally:
            self.adopting -= claimed
            left = sorted(claimed - taken)
            if left:
                with contextlib.suppress(StoreError):
                    await coordinator.store.release_runs(config.id, left)

    async def adopt(self, record: RunRecord) -> ActiveRun | None:
        """Take over a run claimed at ``record.epoch``: rebuild its schedule from the store,
        consume what is still waiting in the old coordinator's reply queue, and carry on.
        Returns None for a run that cannot be resumed (it is failed in the store)."""
        coordinator = self._coordinator
        store, config = coordinator.store, coordinator.config
        plan = await store.get_plan(record.plan_digest)
        if plan is None:
            error = f"cannot resume the run: its plan {record.plan_digest} is missing"
            log.error("run %s: %s", record.run_id, error)
            fence = Fence(config.id, {record.run_id: record.epoch})
            await store.fail_run(record.run_id, error, ts=time.time(), fence=fence)
            return None
        try:
            await coordinator.open_gateways(plan)
        except ConfigError as exc:
            log.error("coordinator %s cannot take over run %s: %s", config.id, record.run_id, exc)
            return None
        for queue in plan.queues:
            await coordinator.declare(queue)
        run = ActiveRun(record.run_id, plan, record.priority, RunState(plan), record.epoch)
        actions, unconfirmed, slotted = await self._restore(run, record)
        history = await store.get_events(record.run_id)
        drivers = _drivers(history)
        for driver in drivers:
            # Replies to the attempts any of them dispatched (and heartbeats of the steps
            # running) may still come to its reply queue.
            if driver != config.id:
                await self._adopt_replies(reply_queue(driver), record.run_id)
        requests = await store.cancel_requests([record.run_id])
        if record.run_id in requests:  # the run is cancelled instead of resumed
            run.cancel = requests[record.run_id] or ""
        run.notify = _client(history)
        previous = drivers[-1] if drivers else None
        coordinator.drive(run)
        admission = coordinator.throttle.admission
        if admission is not None and run.cancel is None:
            candidate = Candidate(record.run_id, record.priority, record.created_at, record.tags)
            if record.status is RunStatus.PENDING:
                # Never started: it asks for admission again, as a new run would.
                run.state = RunState(plan, fail_fast=config.fail_fast)
                coordinator.throttle.start_or_queue(candidate)
                log.warning("coordinator %s took over run %s (not started)", config.id, run.run_id)
                await coordinator.notify(run, history)
                return run
            admission.occupy(candidate)
        coordinator.trace(run, resumed=True)
        started = record.status is not RunStatus.PENDING
        coordinator.post(
            Resume(record.run_id, tuple(actions), previous, unconfirmed, started, slotted)
        )
        log.warning("coordinator %s took over run %s from %s", config.id, record.run_id, previous)
        # Its client may have missed events while nobody drove the run: it gets them all
        # (it keeps those it has not seen yet).
        await coordinator.notify(run, history)
        return run

    async def reload(self, run: ActiveRun) -> None:
        """Rebuild the schedule of ``run``, driven here, from the store (after a scheduler
        pass failed half-way), and carry on from there."""
        record = await self._coordinator.store.get_run(run.run_id)
        if record is None or record.run_id != run.run_id:
            raise StoreError(f"run {run.run_id} is not in the store any more")
        actions, unconfirmed, slotted = await self._restore(run, record)
        coordinator_id = self._coordinator.config.id
        started = record.status is not RunStatus.PENDING
        resume = Resume(run.run_id, tuple(actions), coordinator_id, unconfirmed, started, slotted)
        self._coordinator.post(resume)

    async def _restore(
        self, run: ActiveRun, record: RunRecord
    ) -> tuple[list[Action], tuple[tuple[int, int], ...], tuple[int, ...]]:
        """Give ``run`` a schedule rebuilt from its recorded steps; return what to do now,
        the ``(step index, attempt)`` whose dispatch was never confirmed (dispatched
        again), and the steps that hold slots of caps in the store."""
        coordinator = self._coordinator
        store = coordinator.store
        plan, waiting = await self._history(run.plan, record.run_id)
        by_key = {s.key: s for s in await store.get_steps(record.run_id)}
        missing = [s.key for s in plan.steps if s.key not in by_key]
        if missing:
            raise StoreError(f"run {record.run_id} has no recorded step {missing[0]!r}")
        steps = [by_key[s.key] for s in plan.steps]
        state = RunState(plan, fail_fast=coordinator.config.fail_fast)
        for index in plan.map_sources:  # lists in the object store, for the maps to read
            data = await claim.load_list(coordinator.objects, steps[index].output)
            if data is not None:
                state.lists[index] = data
        recorded = [
            RecordedStep(s.status, s.attempts, s.output, s.error, s.failures, s.confirmed)
            for s in steps
        ]
        started = record.status is not RunStatus.PENDING
        actions = state.restore(
            recorded,
            started=started,
            waits={plan.index[key]: times for key, times in waiting.items()},
            now=time.time(),
        )
        unconfirmed = tuple((i, r.attempts) for i, r in enumerate(recorded) if r.unconfirmed)
        slotted: tuple[int, ...] = ()
        if any(s.limits is not None for s in plan.steps):
            # Slots of caps held by attempts that ended while nobody drove the run are
            # freed; those of its steps queued or running stay theirs.
            live = (StepStatus.QUEUED, StepStatus.RUNNING)
            kept = await store.keep_slots(record.run_id, [s.key for s in steps if s.status in live])
            slotted = tuple(sorted(plan.index[key] for key in kept if key in plan.index))
        run.state = state
        run.running_on = {}
        now = time.monotonic()
        for index, step in enumerate(steps):
            kind = run.plan.steps[index].kind
            if step.status is StepStatus.RUNNING:
                # Its worker's heartbeats (to the old reply queue, consumed below) keep it;
                # silence for worker_timeout re-dispatches it.
                worker = step.worker or f"unknown-worker-of-{record.owner}"
                run.running_on[index] = worker
                coordinator.workers_seen.setdefault(worker, now)
                if kind != NATIVE:  # a Celery task: its gateway speaks for its worker
                    coordinator.gateways[kind].vouch(
                        [(run.run_id, step.key, step.attempts, worker)]
                    )
            elif (
                kind == CHILD
                and step.status is StepStatus.QUEUED
                and step.confirmed == step.attempts
            ):
                # Its child run was created, its start not recorded: follow it.
                coordinator.gateways[kind].vouch([(run.run_id, step.key, step.attempts, "")])
        return actions, unconfirmed if started else (), slotted

    async def _history(
        self, plan: Plan, run_id: str
    ) -> tuple[Plan, dict[str, tuple[float, float]]]:
        """What the run's event log keeps that its rows do not: ``plan`` (the run's, without
        expansions) with the maps expanded as recorded, in the same order (the same steps
        at the same indices), and the steps waiting to run again (:func:`aexec.again`)
        with their ``(due, since)`` times."""
        if plan.expanded:  # reloading a run driven here: from its plan as stored
            stored = await self._coordinator.store.get_plan(plan.digest)
            if stored is None:
                raise StoreError(f"run {run_id}: its plan {plan.digest} is missing")
            plan = stored
        events = await self._coordinator.store.get_events(run_id)
        waiting: dict[str, tuple[float, float]] = {}
        for event in events:
            if event.step is not None and event.kind in fold.STEP_STATUS:
                waiting.pop(event.step, None)
                if event.kind is EventKind.STEP_WAITING:
                    due, since = event.data.get("due"), event.data.get("since")
                    if isinstance(due, int | float) and isinstance(since, int | float):
                        waiting[event.step] = (float(due), float(since))
            if event.kind is not EventKind.STEP_EXPANDED or event.step is None:
                continue
            index = plan.index.get(event.step)
            count, position = event.data.get("count"), event.data.get("position")
            if (
                index is None
                or index in plan.expanded
                or not isinstance(count, int)
                or count < 0
                or position != len(plan.steps)
            ):
                raise StoreError(f"run {run_id}: its expansion of {event.step!r} does not fit")
            plan = plan.expand(index, count, fold.labels(event))
        return plan, waiting

    async def _adopt_replies(self, queue: str, run_id: str) -> None:
        runs = self._adopted.get(queue)
        if runs is None:
            coordinator = self._coordinator
            await coordinator.transport.declare_queue(queue)
            subscription = await coordinator.transport.consume(
                queue, coordinator.on_reply, prefetch=coordinator.config.reply_prefetch
            )
            self._adopted[queue] = runs = set()
            self._subscriptions[queue] = subscription
        runs.add(run_id)

    async def release_adopted(self, run_id: str) -> None:
        """The run no longer needs the old reply queues it was taken over from: stop
        consuming those no run needs any more.  They are not deleted: other coordinators
        may have taken over other runs of the same dead coordinator, whose replies (of
        steps whose messages the broker holds) still come to them."""
        for queue, runs in list(self._adopted.items()):
            if run_id not in runs:
                continue
            runs.discard(run_id)
            if not runs:
                del self._adopted[queue]
                subscription = self._subscriptions.pop(queue, None)
                if subscription is not None:  # None once the coordinator stops consuming
                    await subscription.cancel()

    async def drop_subscriptions(self) -> None:
        """Consume no old reply queue any more (unacked deliveries go back to them)."""
        subscriptions = list(self._subscriptions.values())
        self._subscriptions.clear()
        for subscription in subscriptions:
            await subscription.cancel()

    async def release(self) -> None:
        """Hand the coordinator's unfinished runs over at once (a clean shutdown)."""
        coordinator = self._coordinator
        if coordinator.runs:
            with contextlib.suppress(StoreError):
                await coordinator.store.release_runs(coordinator.config.id, list(coordinator.runs))


def _drivers(history: list[Event]) -> list[str]:
    """The coordinators that drove a run, as its event log tells, the last one last."""
    drivers: dict[str, None] = {}
    for event in history:
        if event.kind is EventKind.RUN_STARTED or event.kind is EventKind.RUN_RESUMED:
            coordinator = event.data.get("coordinator")
            if isinstance(coordinator, str):
                drivers.pop(coordinator, None)
                drivers[coordinator] = None
    return list(drivers)


def _client(history: list[Event]) -> str | None:
    """The queue of the remote client that submitted a run, as its run_submitted keeps it."""
    for event in history:
        if event.kind is EventKind.RUN_SUBMITTED:
            notify = event.data.get("notify")
            return notify if isinstance(notify, str) else None
    return None


__all__ = ["Leases"]
