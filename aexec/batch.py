"""One scheduler batch: messages and commands in, events to record and steps to publish out.

The coordinator drains everything that has arrived into a :class:`Batch`, which applies it
to each run's pure :class:`~aexec.scheduling.RunState` and turns the resulting actions into
events.  The coordinator then records the events in one transaction and only afterwards
publishes the steps (:attr:`Batch.outgoing`), settles the deliveries (:attr:`Batch.acks`),
arms the retry timers (:attr:`Batch.retries`) and finishes the runs the batch collected
(:attr:`Batch.finished`).  Runs whose events could not be recorded (taken over, or refused
by the store) are taken out of the batch first (:meth:`Batch.discard`).

Workers are told apart by *instance* (a random id per worker process), not by name: a
worker restarted under the same name is a new instance, and does not vouch for the steps
its previous process lost (:func:`worker_key`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, assert_never

from aexec import codec, messages, telemetry
from aexec.directives import Again, Cached, Directive
from aexec.directives import Skip as SkipItself
from aexec.errors import CodecError, PublishError, WorkerLostError
from aexec.events import Event, EventKind
from aexec.inbox import (
    Cancel,
    DispatchFailed,
    MessageRejected,
    Queued,
    Resume,
    RetryDue,
    RunCommand,
    SlotsDue,
    Start,
    TokensGranted,
    Unconfirmed,
    WorkerLost,
)
from aexec.limits import Limiter, Ticket, key_text
from aexec.plan import Plan
from aexec.scheduling import (
    Action,
    Collect,
    Dispatch,
    Expand,
    Fail,
    Finish,
    Later,
    Retry,
    RunState,
    Skip,
    Wait,
)
from aexec.store import RunRecord, SlotFree, SlotTake
from aexec.stream import Subscriber
from aexec.transport import Delivery
from aexec.types import ErrorInfo, RunStatus, StepStatus

log = logging.getLogger(__name__)

OUTPUT_BUDGET = 8 << 20
"""Bytes (roughly) of step output one scheduler pass records: the rest is dropped, with a
marker per attempt, so that the coordinator's memory stays bounded however much the
workers send."""


_LOST_WHY = {
    "redelivered": "was redelivered this attempt: its first worker stopped or lost its connection",
    "crashed": "lost the child process running this step",
    "stopped": "stopped past its grace while running this step",
}
"""How a step's event names an :class:`~aexec.messages.AttemptLost` reason."""


def worker_key(worker: str, instance: str) -> str:
    """Whom a liveness check is about: the worker process ``instance`` of worker ``worker``
    (just the name for a worker that sends no instance id)."""
    return f"{worker}#{instance}" if instance else worker


@dataclass(slots=True)
class Creation:
    """A new run whose rows are written in the transaction of the scheduler pass that
    starts it, with its first dispatches: ``submitted`` is its first event, and
    ``committed`` resolves once that transaction commits (or fails with why the run could
    not be created: nothing of it was recorded or sent)."""

    record: RunRecord
    plan: Plan
    submitted: Event
    committed: asyncio.Future[None]


class ActiveRun:
    """A run this coordinator drives: its schedule, waiters and event subscribers.

    ``epoch`` is the run's epoch this coordinator holds (its fence in the store)."""

    __slots__ = (
        "cancel",
        "created_at",
        "creation",
        "done",
        "epoch",
        "notify",
        "notify_lost",
        "priority",
        "record",
        "run_id",
        "running_on",
        "spilled",
        "state",
        "subscribers",
        "trace",
    )

    def __init__(
        self, run_id: str, plan: Plan, priority: int, state: RunState, epoch: int = 1
    ) -> None:
        self.run_id = run_id
        self.priority = priority
        self.state = state  # its plan is ``plan``, with the maps expanded so far
        self.epoch = epoch
        self.created_at = time.time()
        self.done: asyncio.Future[RunStatus] = asyncio.get_running_loop().create_future()
        self.subscribers: list[Subscriber] = []
        self.running_on: dict[int, str] = {}  # step index → the worker (key) that reported it
        self.notify: str | None = None  # a remote client's queue for this run's events
        self.notify_lost = False  # a send to it failed: it gets the whole log at the end
        # step index → its output as a claim check, once the coordinator moved it to the
        # object store (its dependents' messages would have been too large)
        self.spilled: dict[int, bytes] = {}
        # Set once a cancel of the run is requested: its reason ("" when none was given).
        # A run not started yet is then cancelled instead of started.
        self.cancel: str | None = None
        self.trace: str | None = None  # its span's traceparent, when the coordinator traces
        # The run's row as this coordinator created it, its run events folded in as they
        # are committed (None for a run taken over: its waiters read the store).
        self.record: RunRecord | None = None
        # Set while the run's creation waits to be committed with its first dispatch.
        self.creation: Creation | None = None

    @property
    def plan(self) -> Plan:
        """The run's plan, with the maps expanded so far."""
        return self.state.plan

    @property
    def status(self) -> RunStatus:
        return self.state.run_status

    def final_record(self) -> RunRecord | None:
        """A copy of the run's row as committed at its end, if this coordinator created
        the run and ended it with a commit that it folded in (else None: read the store).
        Its ``lease_until`` is the one the run was created with."""
        record, done = self.record, self.done
        if record is None or not done.done() or done.cancelled() or done.exception():
            return None
        if not record.status.finished or record.status is not done.result():
            return None
        return replace(record, params=dict(record.params), tags=dict(record.tags))


class Epochs(Mapping[str, int]):
    """The epoch a coordinator holds of each run it drives (``runs``): its fence in the
    store (:class:`~aexec.store.Fence`), read live."""

    __slots__ = ("_runs",)

    def __init__(self, runs: dict[str, ActiveRun]) -> None:
        self._runs = runs

    def __getitem__(self, run_id: str) -> int:
        return self._runs[run_id].epoch

    def __iter__(self) -> Iterator[str]:
        return iter(self._runs)

    def __len__(self) -> int:
        return len(self._runs)


@dataclass(slots=True)  # not frozen: one per dispatch, and frozen ones take 3x to build
class Outgoing:
    """Publish ``attempt`` of step ``index`` of ``run``."""

    run: ActiveRun
    index: int
    attempt: int


@dataclass(frozen=True, slots=True)
class RetryTimer:
    """Post ``due`` to the coordinator's inbox in ``delay`` seconds (a retry's backoff)."""

    delay: float
    due: RetryDue


class Batch:
    """What one pass of the scheduler decided; ``runs`` are the coordinator's active runs.

    ``acks`` are the deliveries the pass consumed, each with the completion or progress
    report it carried (None for a heartbeat: about no single run), to ack once the batch
    is recorded; ``touched`` the runs whose schedule the pass changed."""

    __slots__ = (
        "acks",
        "confirmed",
        "coordinator_id",
        "events",
        "finished",
        "limiter",
        "now",
        "outgoing",
        "output_budget",
        "retries",
        "runs",
        "slot_frees",
        "slot_takes",
        "touched",
        "workers_seen",
    )

    def __init__(
        self,
        runs: dict[str, ActiveRun],
        coordinator_id: str,
        workers_seen: dict[str, float],
        limiter: Limiter | None = None,
    ) -> None:
        self.runs = runs
        self.limiter = Limiter() if limiter is None else limiter
        self.coordinator_id = coordinator_id
        self.workers_seen = workers_seen
        self.now = time.time()
        self.events: list[Event] = []
        self.outgoing: list[Outgoing] = []
        self.finished: list[ActiveRun] = []
        self.retries: list[RetryTimer] = []
        self.acks: list[
            tuple[Delivery, messages.Completion | messages.Progress | messages.AttemptLost | None]
        ] = []
        self.touched: set[str] = set()
        self.confirmed: list[tuple[str, str, int]] = []  # dispatches the broker confirmed
        self.output_budget = OUTPUT_BUDGET
        # Slots of caps to take in the store before these steps go out, and to free (a
        # step's attempts up to this one; every step of the run if None).
        self.slot_takes: list[tuple[SlotTake, int]] = []  # each with its step's index
        self.slot_frees: list[SlotFree] = []

    def discard(self, run_ids: set[str]) -> None:
        """Take the runs ``run_ids`` out of the batch: their events, steps to publish,
        retry timers and endings (not their deliveries, which the caller settles)."""
        if not run_ids:
            return
        self.events = [e for e in self.events if e.run_id not in run_ids]
        self.outgoing = [o for o in self.outgoing if o.run.run_id not in run_ids]
        self.retries = [t for t in self.retries if t.due.run_id not in run_ids]
        self.finished = [r for r in self.finished if r.run_id not in run_ids]
        if self.slot_takes or self.slot_frees:  # the run's new driver decides those
            self.slot_takes = [t for t in self.slot_takes if t[0].run_id not in run_ids]
            self.slot_frees = [f for f in self.slot_frees if f.run_id not in run_ids]

    def command(self, command: RunCommand) -> None:
        """Apply a command to its run; one for a run this coordinator does not drive (any
        more) is dropped."""
        now = self.now
        run_id = command.run_id
        run = self.runs.get(run_id)
        if run is None:
            return
        self.touched.add(run_id)
        match command:
            case Start():
                self._start(run, now)
            case Queued(position=position):
                self.events.append(
                    Event(EventKind.RUN_QUEUED, run_id, now, data={"position": position})
                )
            case RetryDue(index=index, attempt=attempt):
                self.actions(run, run.state.retry_due(index, attempt), now)
            case Cancel(reason=reason):
                if run.cancel is None or reason:
                    run.cancel = reason or ""
                self.actions(run, run.state.cancel(), now)
            case Resume(actions=actions, previous=previous):
                self.events.append(
                    Event(
                        EventKind.RUN_RESUMED,
                        run_id,
                        now,
                        data={"coordinator": self.coordinator_id, "previous": previous},
                    )
                )
                self.admitted(self.limiter.forget_run(run_id), now)  # a schedule rebuilt
                if command.slotted:  # freed from here when their attempts end
                    self.limiter.slots[run_id] = {i: run.state.attempts[i] for i in command.slotted}
                if run.cancel is not None:  # a cancel was requested before it was taken over
                    actions = tuple(run.state.cancel())
                else:
                    self._occupy(run, command.slotted)
                    self._unconfirmed_before(run, command.unconfirmed, now)
                    if not command.started:  # recorded as pending: it starts now
                        self.events.append(self._started_event(run, now))
                self.actions(run, actions, now)
            case WorkerLost(index=index, attempt=attempt, worker=worker):
                self._lost(run, index, attempt, worker, now)
            case Unconfirmed(index=index, attempt=attempt, reason=reason):
                self._unconfirmed(run, index, attempt, reason, now)
            case DispatchFailed(index=index, attempt=attempt, error=error):
                failed = run.state.failed(index, attempt, error)
                if failed is not None:
                    self.actions(run, failed, now)
            case MessageRejected():
                self.events.append(
                    Event(
                        EventKind.MESSAGE_REJECTED,
                        run_id,
                        now,
                        command.step,
                        command.attempt,
                        {
                            "reason": command.reason,
                            "message": command.kind,
                            "destination": command.destination,
                        },
                    )
                )
            case _:
                assert_never(command)

    def _start(self, run: ActiveRun, now: float) -> None:
        if run.cancel is not None:  # cancelled before it started: nothing is dispatched
            self.actions(run, run.state.cancel(), now)
            return
        if run.state.run_status is not RunStatus.PENDING:
            return  # cancelled while it was queued for admission
        self.events.append(self._started_event(run, now))
        self.actions(run, run.state.start(), now)

    def _started_event(self, run: ActiveRun, now: float) -> Event:
        data = {
            "steps": len(run.plan),
            "priority": run.priority,
            "coordinator": self.coordinator_id,
        }
        return Event(EventKind.RUN_STARTED, run.run_id, now, data=data)

    def _lost(
        self,
        run: ActiveRun,
        index: int,
        attempt: int,
        worker: str,
        now: float,
        why: str = "stopped heartbeating while running this step",
    ) -> None:
        actions = run.state.lost_worker(index, attempt)
        if actions is None:
            return
        run.running_on.pop(index, None)
        if any(isinstance(action, Dispatch) for action in actions):  # else it failed for good
            error = ErrorInfo.from_exception(WorkerLostError(f"worker {worker} {why}"))
            self._lost_attempt(run, index, attempt, error.to_dict(), now, worker=worker)
        self.actions(run, actions, now, {"worker": worker})

    def _lost_attempt(
        self,
        run: ActiveRun,
        index: int,
        attempt: int,
        error: dict[str, Any],
        now: float,
        *,
        worker: str | None = None,
    ) -> None:
        """Log that ``attempt`` of step ``index`` was lost (its worker died, or its message
        was never confirmed) and runs again at once, without spending a retry."""
        data: dict[str, Any] = {"error": error, "retry_in": 0.0, "lost": True}
        if worker is not None:
            data = {"worker": worker, **data}
        key = run.plan.steps[index].key
        self.events.append(Event(EventKind.STEP_RETRYING, run.run_id, now, key, attempt, data))

    def _unconfirmed_before(
        self, run: ActiveRun, unconfirmed: tuple[tuple[int, int], ...], now: float
    ) -> None:
        """Record as lost the attempts of a run taken over whose dispatch the broker never
        confirmed (they are dispatched again as new attempts)."""
        if not unconfirmed:
            return
        error = ErrorInfo.from_exception(
            PublishError(
                "the broker had not confirmed this step's message when its coordinator "
                "stopped: dispatched again",
                [],
            )
        ).to_dict()
        for index, attempt in unconfirmed:
            self._lost_attempt(run, index, attempt, error, now)

    def _unconfirmed(
        self, run: ActiveRun, index: int, attempt: int, reason: str, now: float
    ) -> None:
        actions = run.state.unconfirmed(index, attempt)
        if actions is None:
            return
        error = ErrorInfo.from_exception(
            PublishError(f"the broker did not confirm this step's message: {reason}", [])
        )
        self._lost_attempt(run, index, attempt, error.to_dict(), now)
        self.actions(run, actions, now)

    def reply(self, msg: messages.Message) -> bool:
        """Apply a message from a reply queue; False for a kind that does not belong there."""
        match msg:
            case messages.Completion():
                self.completion(msg)
            case messages.Progress():
                self.progress(msg)
            case messages.Output():
                self.output(msg)
            case messages.Heartbeat():
                self.heartbeat(msg)
            case messages.AttemptLost():
                self.attempt_lost(msg)
            case _:
                return False
        return True

    def attempt_lost(self, msg: messages.AttemptLost) -> None:
        """A worker will not run (or finish) an attempt: a new attempt, as for a lost
        worker, unless the attempt is known to run on another live worker (the reporter
        got a redelivered copy of what that worker still runs)."""
        run = self.runs.get(msg.run_id)
        if run is None:
            return
        index = run.plan.index.get(msg.step_key)
        if index is None or run.state.attempts[index] != msg.attempt:
            return
        runner = run.running_on.get(index)
        reporter = worker_key(msg.worker, msg.instance)
        if runner is not None and runner != reporter and runner in self.workers_seen:
            return  # its heartbeats keep it; their silence re-dispatches it
        why = _LOST_WHY.get(msg.reason, msg.reason)
        self._lost(run, index, msg.attempt, msg.worker, self.now, why)

    def completion(self, msg: messages.Completion) -> None:
        run = self.runs.get(msg.run_id)
        if run is None:
            log.debug("completion for a run this coordinator does not drive: %s", msg.run_id)
            return
        index = run.plan.index.get(msg.step_key)
        if index is None:
            log.warning("completion for unknown step %r of run %s", msg.step_key, msg.run_id)
            return
        self.touched.add(msg.run_id)
        data: dict[str, Any] = {"worker": msg.worker, "started_at": msg.started_at}
        if run.running_on and run.state.attempts[index] == msg.attempt:
            run.running_on.pop(index, None)
        error = msg.error
        if error is None:
            error = _undecodable(msg)
        if error is None:
            directive = codec.directive_of(msg.output or b"")
            if directive is not None:
                self.directive(run, index, msg, directive, data)
                return
            actions = run.state.succeeded(index, msg.attempt, msg.output)
            if actions is None:
                return  # a duplicate or a superseded attempt: recorded once already
            if self.limiter:
                self._release(run.run_id, index, msg.finished_at, msg.step_key)
            self.events.append(
                Event(
                    EventKind.STEP_SUCCEEDED,
                    msg.run_id,
                    msg.finished_at,
                    msg.step_key,
                    msg.attempt,
                    data,
                    msg.output,
                )
            )
        else:
            actions = run.state.failed(index, msg.attempt, error)
            if actions is None:
                return
        self.actions(run, actions, msg.finished_at, data)

    def directive(
        self,
        run: ActiveRun,
        index: int,
        msg: messages.Completion,
        directive: Directive,
        data: dict[str, Any],
    ) -> None:
        """The attempt returned a decision instead of an output: it skipped itself, or its
        worker found its output in the step cache."""
        match directive:
            case SkipItself():
                actions = run.state.skipped(index, msg.attempt, directive.reason)
            case Again():
                actions = run.state.again(
                    index, msg.attempt, directive.after, directive.reason, msg.finished_at
                )
            case Cached():
                output = directive.output
                actions = run.state.succeeded(index, msg.attempt, output)
                if actions is not None:
                    self.events.append(
                        Event(
                            EventKind.STEP_SUCCEEDED,
                            msg.run_id,
                            msg.finished_at,
                            msg.step_key,
                            msg.attempt,
                            {**data, "cached": True},
                            output,
                        )
                    )
        if actions is not None:
            self.actions(run, actions, msg.finished_at, data)

    def progress(self, msg: messages.Progress) -> None:
        key = worker_key(msg.worker, msg.instance)
        self.workers_seen[key] = time.monotonic()
        run = self.runs.get(msg.run_id)
        if run is None:
            return
        index = run.plan.index.get(msg.step_key)
        if index is None or run.state.attempts[index] != msg.attempt:
            return
        self.touched.add(msg.run_id)
        if not run.state.status[index].finished:
            run.running_on[index] = key
        if run.state.started(index, msg.attempt):
            self.events.append(
                Event(
                    EventKind.STEP_STARTED,
                    msg.run_id,
                    msg.ts,
                    msg.step_key,
                    msg.attempt,
                    _started_data(msg.worker, msg.instance),
                )
            )
        if run.state.status[index] is StepStatus.RUNNING:
            data: dict[str, Any] = {"worker": msg.worker}
            if msg.fraction is not None:
                data["fraction"] = msg.fraction
            if msg.message is not None:
                data["message"] = msg.message
            self.events.append(
                Event(EventKind.STEP_PROGRESS, msg.run_id, msg.ts, msg.step_key, msg.attempt, data)
            )

    def output(self, msg: messages.Output) -> None:
        """Record what steps reported (:mod:`aexec.telemetry`): the entries of the current
        attempts of runs this coordinator drives; the rest is ignored (a run that ended,
        or that another coordinator drives now, or a superseded attempt).  Past the pass's
        budget, entries are dropped and counted in a marker per attempt."""
        self.workers_seen[worker_key(msg.worker, msg.instance)] = time.monotonic()
        over: dict[tuple[str, str, int], list[int]] = {}
        for run_id, step_key, attempt, ts, kind, data in msg.entries:
            run = self.runs.get(run_id)
            if run is None:
                continue
            index = run.plan.index.get(step_key)
            if index is None or run.state.attempts[index] != attempt:
                continue
            self.touched.add(run_id)
            self._running(run, index, attempt, ts, msg.worker, msg.instance)
            event = telemetry.entry_event(run_id, step_key, attempt, ts, kind, data, msg.worker)
            size = telemetry.size_of(event.data)
            if size > self.output_budget:
                counts = over.setdefault((run_id, step_key, attempt), [0, 0])
                counts[0] += 1
                counts[1] += size
                continue
            self.output_budget -= size
            self.events.append(event)
        for (run_id, step_key, attempt), (entries, size) in over.items():
            reason = "the coordinator took more step output at once than it records in one pass"
            self.events.append(
                telemetry.dropped_event(run_id, step_key, attempt, self.now, entries, size, reason)
            )

    def _running(
        self, run: ActiveRun, index: int, attempt: int, ts: float, worker: str, instance: str
    ) -> None:
        """News that ``attempt`` of step ``index`` runs on ``worker``: it runs there now,
        and it started, if that was not recorded yet."""
        if not run.state.status[index].finished:
            run.running_on[index] = worker_key(worker, instance)
        if run.state.started(index, attempt):
            self.events.append(
                Event(
                    EventKind.STEP_STARTED,
                    run.run_id,
                    ts,
                    run.plan.steps[index].key,
                    attempt,
                    _started_data(worker, instance),
                )
            )

    def heartbeat(self, msg: messages.Heartbeat) -> None:
        """Apply a heartbeat to the runs it names that this coordinator drives."""
        worker = worker_key(msg.worker, msg.instance)
        self.workers_seen[worker] = time.monotonic()
        for run_id, key, attempt in msg.running:
            run = self.runs.get(run_id)
            if run is None:
                continue
            index = run.plan.index.get(key)
            if index is None or run.state.attempts[index] != attempt:
                continue
            self.touched.add(run_id)
            if not run.state.status[index].finished:
                run.running_on[index] = worker
            if run.state.started(index, attempt):
                self.events.append(
                    Event(
                        EventKind.STEP_STARTED,
                        run_id,
                        msg.ts,
                        key,
                        attempt,
                        _started_data(msg.worker, msg.instance),
                    )
                )

    def actions(
        self,
        run: ActiveRun,
        actions: Sequence[Action],
        ts: float,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Turn the scheduling ``actions`` of ``run`` into events, steps to publish, retry
        timers and a finished run; ``extra`` goes into the data of failure events."""
        run_id, steps = run.run_id, run.plan.steps
        self.touched.add(run_id)
        limiter = self.limiter
        for action in actions:
            # Class patterns without sub-patterns: this runs once per step and event.
            match action:
                case Dispatch():
                    index, attempt = action.index, action.attempt
                    if steps[index].limits is not None:
                        if self._admit(run, index):
                            self._go(run, index, attempt, ts)
                        continue  # or it waits in the coordinator for a limit
                    self.outgoing.append(Outgoing(run, index, attempt))
                    self.events.append(
                        Event(EventKind.STEP_DISPATCHED, run_id, ts, steps[index].key, attempt)
                    )
                case Fail():
                    if limiter:
                        self._release(run_id, action.index, ts)
                    self.events.append(
                        Event(
                            EventKind.STEP_FAILED,
                            run_id,
                            ts,
                            steps[action.index].key,
                            action.attempt,
                            {**(extra or {}), "error": action.error.to_dict()},
                        )
                    )
                case Retry():
                    if limiter:
                        self._release(run_id, action.index, ts)
                    self.events.append(
                        Event(
                            EventKind.STEP_RETRYING,
                            run_id,
                            ts,
                            steps[action.index].key,
                            action.attempt - 1,
                            {
                                **(extra or {}),
                                "error": action.error.to_dict(),
                                "retry_in": action.delay,
                            },
                        )
                    )
                    due = RetryDue(run_id, action.index, action.attempt)
                    self.retries.append(RetryTimer(action.delay, due))
                case Skip():
                    kind = (
                        EventKind.STEP_CANCELLED
                        if action.status is StepStatus.CANCELLED
                        else EventKind.STEP_SKIPPED
                    )
                    attempts = run.state.attempts
                    why = {"reason": action.reason} if action.reason else {}
                    for index in action.indices:
                        if limiter:
                            self._release(run_id, index, ts)
                        self.events.append(
                            Event(kind, run_id, ts, steps[index].key, attempts[index], why)
                        )
                case Wait():
                    self.events.append(
                        Event(
                            EventKind.STEP_WAITING,
                            run_id,
                            ts,
                            steps[action.index].key,
                            action.attempt - 1,
                            {
                                "after": action.delay,
                                "due": ts + action.delay,
                                "reason": action.reason,
                                "since": action.since,
                            },
                        )
                    )
                    due = RetryDue(run_id, action.index, action.attempt)
                    self.retries.append(RetryTimer(action.delay, due))
                case Later():
                    due = RetryDue(run_id, action.index, action.attempt)
                    self.retries.append(RetryTimer(action.delay, due))
                case Expand():
                    template = steps[action.index]
                    self.events.append(
                        Event(
                            EventKind.STEP_EXPANDED,
                            run_id,
                            ts,
                            template.key,
                            0,
                            {
                                "count": action.count,
                                "position": action.first,
                                "name": template.name,
                                "queue": template.queue,
                                **({} if action.labels is None else {"labels": action.labels}),
                            },
                        )
                    )
                case Collect():
                    self.events.append(
                        Event(
                            EventKind.STEP_SUCCEEDED,
                            run_id,
                            ts,
                            steps[action.index].key,
                            0,
                            {"collected": len(run.plan.collected(action.index))},
                            action.output,
                        )
                    )
                case Finish():
                    if limiter:
                        self.admitted(limiter.forget_run(run_id), ts)
                        if limiter.slots.pop(run_id, None) is not None:
                            self.slot_frees.append(SlotFree(run_id))
                    # The run ends when this pass decides it, not when the step whose
                    # completion tipped it finished (one delayed in the broker came last).
                    end = max(ts, self.now)
                    self.events.append(self._finish_event(run, action.status, end))
                    self.finished.append(run)
                case _:
                    assert_never(action)

    # -- limits ----------------------------------------------------------------------------

    def _admit(self, run: ActiveRun, index: int) -> bool:
        """Step ``index`` of ``run`` is ready and has limits: True if it may go now; if
        not, it waits in the limiter, and no event says so (``runs show`` tells it from
        the plan: :mod:`aexec.waiting`), so that waiting costs nothing in the store."""
        step = run.plan.steps[index]
        limits = step.limits
        assert limits is not None
        key = limits.key
        if key is None and limits.key_input is not None:
            key = _input_key(run.state.outputs[step.deps[limits.key_input]])
        limiter = self.limiter
        return limiter.admit(
            (run.run_id, index),
            limiter.gates(step.name, limits, key),
            run.run_id if key is None else key,
        )

    def _occupy(self, run: ActiveRun, slotted: tuple[int, ...]) -> None:
        """A run taken over: its limited steps in flight hold their caps, and so do those
        whose attempts hold slots of caps in the store (``slotted``)."""
        steps, status = run.plan.steps, run.state.status
        for index in range(len(steps)):
            limits = steps[index].limits
            if limits is None or (status[index] is not StepStatus.RUNNING and index not in slotted):
                continue
            key = limits.key
            if key is None and limits.key_input is not None:
                key = _input_key(run.state.outputs[steps[index].deps[limits.key_input]])
            gates = self.limiter.gates(steps[index].name, limits, key)
            self.limiter.occupy((run.run_id, index), gates)

    def _release(self, run_id: str, index: int, ts: float, key: str | None = None) -> None:
        """Step ``index`` (``key``, if the caller knows it) of run ``run_id`` let go of its
        limits: the steps they held back may go, and the slots it held in the store are
        freed."""
        limiter = self.limiter
        admitted = limiter.release((run_id, index))
        if admitted:
            self.admitted(admitted, ts)
        held = limiter.slots.get(run_id)
        if held is not None:
            attempt = held.pop(index, None)
            if attempt is not None:
                if key is None:
                    run = self.runs.get(run_id)
                    if run is None:
                        return
                    key = run.plan.steps[index].key
                self.slot_frees.append(SlotFree(run_id, key, attempt))

    def _go(self, run: ActiveRun, index: int, attempt: int, ts: float) -> None:
        """Step ``index`` of ``run`` passed its limits here: out it goes, once the store
        gave it the slots of its caps if it has any (they hold across coordinators)."""
        run_id = run.run_id
        caps = self.limiter.caps((run_id, index))
        key = run.plan.steps[index].key
        if caps:
            self.slot_takes.append((SlotTake(run_id, key, attempt, caps), index))
            return
        self._publish(run, index, attempt, ts, key)

    def _publish(self, run: ActiveRun, index: int, attempt: int, ts: float, key: str) -> None:
        run_id = run.run_id
        self.touched.add(run_id)
        self.outgoing.append(Outgoing(run, index, attempt))
        self.events.append(Event(EventKind.STEP_DISPATCHED, run_id, ts, key, attempt))

    def _slot_wanted(self, run_id: str, index: int, attempt: int) -> ActiveRun | None:
        """The run of step ``index`` if its ``attempt`` still waits for the store's slots."""
        run = self.runs.get(run_id)
        if run is None:
            return None
        state = run.state
        if state.status[index] is not StepStatus.QUEUED or state.attempts[index] != attempt:
            return None
        return run if self.limiter.holds((run_id, index)) else None

    def wanted_takes(self) -> list[tuple[SlotTake, int]]:
        """Take the pass's slot takes out of the batch, each with its step's index, less
        those whose attempt no longer waits for the store's slots (a step this pass took a
        slot for and then let go of: cancelled)."""
        takes, self.slot_takes = self.slot_takes, []
        return [
            (take, index)
            for take, index in takes
            if self._slot_wanted(take.run_id, index, take.attempt) is not None
        ]

    def slots_taken(self, take: SlotTake, index: int, granted: bool) -> SlotsDue | None:
        """The store answered ``take`` (of step ``index``, as :meth:`wanted_takes` found
        it): the step goes out if it got its slots; if not, it asks again later (the
        :class:`SlotsDue` returned, for the caller's timer).  Slots given to an attempt
        that no longer wants them are freed."""
        wanted = self._slot_wanted(take.run_id, index, take.attempt)
        if granted:
            if wanted is None:
                self.slot_frees.append(SlotFree(take.run_id, take.step, take.attempt))
                return None
            held = self.limiter.slots.get(take.run_id)
            if held is None:
                self.limiter.slots[take.run_id] = {index: take.attempt}
            else:
                held[index] = take.attempt
            self._publish(wanted, index, take.attempt, self.now, take.step)
            return None
        if wanted is None:
            return None
        return SlotsDue(take.run_id, index, take.attempt)

    def slots_due(self, item: SlotsDue) -> None:
        """Ask the store again for the slots it refused (if the step still wants them)."""
        run = self._slot_wanted(item.run_id, item.index, item.attempt)
        if run is not None:
            self._go(run, item.index, item.attempt, self.now)

    def admitted(self, tickets: list[Ticket], ts: float) -> None:
        """The limiter let these waiting steps go: publish them."""
        for run_id, index in tickets:
            run = self.runs.get(run_id)
            if run is None:
                continue  # a run let go of: forget_run drops its tickets
            state = run.state
            attempt = state.attempts[index]
            if state.status[index] is not StepStatus.QUEUED:
                self._release(run_id, index, ts)  # it will not go
                continue
            self._go(run, index, attempt, ts)

    def tokens(self, command: TokensGranted, monotonic_now: float) -> None:
        """Tokens of a rate limit came from the store."""
        admitted = self.limiter.grant(command.gate, command.tokens, command.retry_in, monotonic_now)
        self.admitted(admitted, self.now)

    def _finish_event(self, run: ActiveRun, status: RunStatus, ts: float) -> Event:
        if status is RunStatus.SUCCEEDED:
            state = run.state
            inputs = [codec.embed(state.outputs[d]) for d in run.plan.result_deps]
            result = codec.encode(codec.decode(run.plan.result, inputs=inputs))
            return Event(EventKind.RUN_SUCCEEDED, run.run_id, ts, output=result)
        if status is RunStatus.CANCELLED:
            error = f"run cancelled: {run.cancel}" if run.cancel else "run cancelled"
            return Event(EventKind.RUN_CANCELLED, run.run_id, ts, data={"error": error})
        failed = [
            f"{run.plan.steps[i].key}: {err.type}: {err.message}"
            for i, err in sorted(run.state.errors.items())
        ]
        return Event(
            EventKind.RUN_FAILED,
            run.run_id,
            ts,
            data={"error": "failed steps: " + "; ".join(failed)},
        )


def _started_data(worker: str, instance: str) -> dict[str, Any]:
    """step_started's data: the worker's name (its step's row keeps it), and its instance."""
    return {"worker": worker, "instance": instance} if instance else {"worker": worker}


def _input_key(output: bytes) -> str:
    """A limit key taken from an upstream step's (encoded) output."""
    try:
        return key_text(codec.decode(output))
    except CodecError:
        return output.hex()[:64]


def _undecodable(msg: messages.Completion) -> ErrorInfo | None:
    """The error of a completion whose output does not decode (strictly): recorded, it
    would break the step's dependents and the run's result."""
    assert msg.output is not None  # a completion has an output when it has no error
    try:
        codec.check_decodable(msg.output)
    except CodecError as exc:
        message = " ".join(str(exc).split())
        return ErrorInfo(
            "CodecError",
            f"step {msg.step_key!r} returned output that cannot be decoded: {message}",
            retryable=False,
        )
    return None
