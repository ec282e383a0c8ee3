"""The pure scheduling core: (plan, state, event) → actions.  No I/O, no event loop.

:class:`RunState` holds one run's step statuses and takes the events that matter to the
schedule — a step succeeded, failed, its retry is due, the run is cancelled — returning
the actions the engine must carry out: dispatch a step, retry it after a delay, mark steps
skipped, finish the run.  An event that does not match the step's current attempt and
status (a duplicate, a late completion of a superseded attempt) returns no actions: this is
the in-memory half of exactly-once completion.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from aexec import codec
from aexec.errors import CodecError, WorkerLostError
from aexec.plan import Plan
from aexec.types import ErrorInfo, RunStatus, StepStatus

_PENDING = StepStatus.PENDING
_QUEUED = StepStatus.QUEUED
_RUNNING = StepStatus.RUNNING
_RETRYING = StepStatus.RETRYING
_SUCCEEDED = StepStatus.SUCCEEDED
_FAILED = StepStatus.FAILED
_SKIPPED = StepStatus.SKIPPED
_CANCELLED = StepStatus.CANCELLED


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Publish step ``index`` as ``attempt``."""

    index: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Retry:
    """Step ``index`` failed and will be dispatched again as ``attempt`` after ``delay`` s."""

    index: int
    attempt: int
    delay: float
    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class Fail:
    """Step ``index`` failed for good on ``attempt``."""

    index: int
    attempt: int
    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class Skip:
    """These steps will not run: ``status`` is ``skipped`` (upstream failed, or skipped by a
    decision: ``reason`` says which) or ``cancelled``."""

    indices: tuple[int, ...]
    status: StepStatus = StepStatus.SKIPPED
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Finish:
    """The run is over; emitted exactly once per run."""

    status: RunStatus


Action = Dispatch | Retry | Fail | Skip | Finish


class RecordedStep(NamedTuple):
    """A step as the store recorded it, for :meth:`RunState.restore`."""

    status: StepStatus
    attempts: int
    output: Any = None
    error: ErrorInfo | None = None
    failures: int = 0  # attempts that really failed (lost ones not counted)
    confirmed: int = 0  # the attempt whose step message the broker confirmed (0: none)

    @property
    def unconfirmed(self) -> bool:
        """Recorded as queued, but the broker never confirmed its current attempt's
        message: it may never have been sent."""
        return self.status is StepStatus.QUEUED and self.confirmed < self.attempts


NONE_OUTPUT = codec.encode(None)
"""The output a step skipped by a decision gives the steps that accept missing inputs."""

MAX_LOST = 5
"""A step whose worker vanished this many times fails instead of being dispatched again."""


class RunState:
    """One run's schedule.  ``outputs`` holds each succeeded step's (opaque) output.

    A step's retries are counted in ``failures``, its attempts that really failed: an
    attempt lost with its worker, dispatched again after a takeover, or whose dispatch was
    not confirmed spends none of them (``attempts`` counts every dispatch).

    Skips come in two kinds.  A failure skips every step that depends on it, at once
    (and the run fails).  A *decision* — a step returned :func:`aexec.skip`, or a step's
    ``when`` condition was false — skips that step, and is settled for each dependent once
    all its inputs are in: a step that accepts missing inputs runs (None in place of the
    skipped ones), any other is skipped by decision too, and the run does not fail.  Steps
    skipped by a decision are in ``missing``; :meth:`restore` finds them again as the
    skipped steps none of whose inputs failed or was skipped by a failure.
    """

    __slots__ = (
        "attempts",
        "conditional",
        "errors",
        "fail_fast",
        "failures",
        "lost",
        "missing",
        "outputs",
        "plan",
        "run_status",
        "sample",
        "status",
        "unfinished",
        "waiting",
    )

    def __init__(
        self, plan: Plan, *, fail_fast: bool = False, sample: Callable[[], float] = random.random
    ) -> None:
        self.plan = plan
        self.fail_fast = fail_fast
        self.sample = sample
        n = len(plan.steps)
        self.status: list[StepStatus] = [_PENDING] * n
        self.attempts: list[int] = [0] * n
        self.failures: list[int] = [0] * n
        self.waiting: list[int] = [len(set(s.deps)) for s in plan.steps]
        self.outputs: list[Any] = [None] * n
        self.errors: dict[int, ErrorInfo] = {}
        self.lost: dict[int, int] = {}  # attempts whose worker vanished, per step
        self.missing: set[int] = set()  # steps skipped by a decision
        self.conditional = any(s.when is not None for s in plan.steps)
        self.unfinished = n
        self.run_status = RunStatus.PENDING

    @property
    def finished(self) -> bool:
        return self.run_status.finished

    def reuse(self, outputs: Mapping[int, Any]) -> None:
        """Before the run starts: these steps (index → output) succeeded in the run this one
        reruns; they count as succeeded with those outputs, with no attempt of their own."""
        if self.run_status is not RunStatus.PENDING:
            return
        steps = self.plan.steps
        for i, output in outputs.items():
            if self.status[i] is _PENDING:
                self.status[i] = _SUCCEEDED
                self.outputs[i] = output
                self.unfinished -= 1
                for d in steps[i].dependents:
                    self.waiting[d] -= 1

    def start(self) -> list[Action]:
        """Begin the run: dispatch every step without inputs (or with them all reused)."""
        if self.run_status is not RunStatus.PENDING:
            return []
        self.run_status = RunStatus.RUNNING
        actions: list[Action] = []
        status, attempts = self.status, self.attempts
        for i, waiting in enumerate(self.waiting):
            if waiting == 0 and status[i] is _PENDING:
                status[i] = _QUEUED
                attempts[i] = 1
                actions.append(Dispatch(i, 1))
        if self.unfinished == 0:
            actions.append(self._finish())
        return actions

    def restore(self, steps: Sequence[RecordedStep], *, started: bool) -> list[Action]:
        """Rebuild the schedule of a run another coordinator drove, from its recorded steps
        in plan order, and return what to do now.

        Steps recorded as queued whose message the broker confirmed stay queued: their
        message is in its queue (a worker that takes it reports to the reply queue of the
        coordinator that sent it).  Those never confirmed may never have reached the
        broker: they are dispatched again as new attempts (a stale attempt's completion is
        ignored when it arrives), which spend no retry.  Running steps stay running: their
        worker's heartbeats, or their absence, decide.  Retrying steps lost their backoff
        timer and are dispatched again at once.
        """
        if self.run_status is not RunStatus.PENDING:
            return []
        if not started:
            return self.start()
        self.run_status = RunStatus.RUNNING
        plan_steps = self.plan.steps
        actions: list[Action] = []
        for i, (status, attempts, output, error, failures, _) in enumerate(steps):
            self.attempts[i] = attempts
            self.failures[i] = failures
            if status.finished:
                self.status[i] = status
                self.unfinished -= 1
                if status is _SKIPPED and self._inputs_ok(i):  # in plan order: deps known
                    self.missing.add(i)
                    output = NONE_OUTPUT
                if status is _SUCCEEDED or i in self.missing:
                    self.outputs[i] = output
                    for d in plan_steps[i].dependents:
                        self.waiting[d] -= 1
                elif status is _FAILED and error is not None:
                    self.errors[i] = error
            elif status is _RUNNING:
                self.status[i] = _RUNNING
        ready: list[int] = []
        for i, recorded in enumerate(steps):
            status, attempts = recorded.status, recorded.attempts
            if status is _QUEUED and not recorded.unconfirmed:
                self.status[i] = _QUEUED  # its message is in the broker
            elif status is _QUEUED or status is _RETRYING:
                self.status[i] = _QUEUED
                self.attempts[i] = attempts + 1
                actions.append(Dispatch(i, attempts + 1))
            elif status is _PENDING and self.waiting[i] == 0 and self._inputs_ok(i):
                ready.append(i)
        self._settle(ready, actions)
        if self.unfinished == 0:
            actions.append(self._finish())
        return actions

    def _inputs_ok(self, index: int) -> bool:
        """Every input of step ``index`` succeeded or was skipped by a decision."""
        status, missing = self.status, self.missing
        return all(status[d] is _SUCCEEDED or d in missing for d in self.plan.steps[index].deps)

    def _settle(self, ready: list[int], actions: list[Action]) -> None:
        """Dispatch, or skip by decision, each pending step of ``ready`` (its inputs all
        in), and in turn the steps that a skip leaves with all their inputs in."""
        steps, status, waiting, attempts = self.plan.steps, self.status, self.waiting, self.attempts
        position = 0
        while position < len(ready):
            d = ready[position]
            position += 1
            reason = self._skip_reason(d)
            if reason is None:
                status[d] = _QUEUED
                attempts[d] += 1
                actions.append(Dispatch(d, attempts[d]))
                continue
            self._decided(d, reason, actions)
            for e in steps[d].dependents:
                waiting[e] -= 1
                if waiting[e] == 0 and status[e] is _PENDING:
                    ready.append(e)

    def _decided(self, index: int, reason: str, actions: list[Action]) -> None:
        """Step ``index`` is skipped by a decision."""
        self.status[index] = _SKIPPED
        self.missing.add(index)
        self.outputs[index] = NONE_OUTPUT
        self.unfinished -= 1
        actions.append(Skip((index,), reason=reason))

    def _skip_reason(self, index: int) -> str | None:
        """Why step ``index``, whose inputs are all in, must not run; None if it runs."""
        step = self.plan.steps[index]
        missing = self.missing
        if missing and not step.accept_missing:
            for d in step.deps:
                if d in missing:
                    return f"its input {self.plan.steps[d].key!r} was skipped"
        when = step.when
        if when is not None:
            key = self.plan.steps[when].key
            if when in missing:
                return f"its condition {key!r} was skipped"
            if not _true(self.outputs[when]):
                return f"its condition {key!r} is false"
        return None

    def started(self, index: int, attempt: int) -> bool:
        """A worker reported the step running; True if that changed its status."""
        if self.attempts[index] == attempt and self.status[index] is _QUEUED:
            self.status[index] = _RUNNING
            return True
        return False

    def succeeded(self, index: int, attempt: int, output: Any) -> list[Action] | None:
        """Step ``index`` succeeded on ``attempt``; None when the event is stale or a duplicate."""
        status = self.status
        if self.attempts[index] != attempt or (
            status[index] is not _QUEUED and status[index] is not _RUNNING
        ):
            return None
        status[index] = _SUCCEEDED
        self.outputs[index] = output
        self.unfinished -= 1
        actions: list[Action] = []
        waiting, attempts = self.waiting, self.attempts
        if self.missing or self.conditional:
            ready: list[int] = []
            for d in self.plan.steps[index].dependents:
                waiting[d] -= 1
                if waiting[d] == 0 and status[d] is _PENDING:
                    ready.append(d)
            self._settle(ready, actions)
        else:
            for d in self.plan.steps[index].dependents:
                waiting[d] -= 1
                if waiting[d] == 0 and status[d] is _PENDING:
                    status[d] = _QUEUED
                    attempts[d] = 1
                    actions.append(Dispatch(d, 1))
        if self.unfinished == 0:
            actions.append(self._finish())
        return actions

    def skipped(self, index: int, attempt: int, reason: str) -> list[Action] | None:
        """Step ``index`` decided on ``attempt`` to be skipped (it returned
        :func:`aexec.skip`); None when the event is stale or a duplicate."""
        status = self.status
        if self.attempts[index] != attempt or (
            status[index] is not _QUEUED and status[index] is not _RUNNING
        ):
            return None
        actions: list[Action] = []
        self._decided(index, reason, actions)
        ready: list[int] = []
        for d in self.plan.steps[index].dependents:
            self.waiting[d] -= 1
            if self.waiting[d] == 0 and status[d] is _PENDING:
                ready.append(d)
        self._settle(ready, actions)
        if self.unfinished == 0:
            actions.append(self._finish())
        return actions

    def failed(self, index: int, attempt: int, error: ErrorInfo) -> list[Action] | None:
        """Step ``index`` failed on ``attempt``: retry it, or fail it and skip its dependents."""
        status = self.status
        if self.attempts[index] != attempt or (
            status[index] is not _QUEUED and status[index] is not _RUNNING
        ):
            return None
        retry = self.plan.steps[index].retry
        failures = self.failures[index] = self.failures[index] + 1
        if (
            error.retryable
            and failures < retry.max_attempts
            and self.run_status is RunStatus.RUNNING
            and not (self.fail_fast and self.errors)  # a fail-fast run starts nothing new
        ):
            status[index] = _RETRYING
            self.attempts[index] = attempt + 1
            return [Retry(index, attempt + 1, retry.delay(failures, self.sample()), error)]
        status[index] = _FAILED
        self.errors[index] = error
        self.unfinished -= 1
        actions: list[Action] = [Fail(index, attempt, error)]
        skipped = self._skip_dependents(index)
        if self.fail_fast:
            skipped.extend(self._skip_waiting())
        if skipped:
            actions.append(Skip(tuple(skipped)))
        if self.unfinished == 0:
            actions.append(self._finish())
        return actions

    def retry_due(self, index: int, attempt: int) -> list[Action]:
        """The backoff before ``attempt`` of step ``index`` has elapsed."""
        if self.status[index] is not _RETRYING or self.attempts[index] != attempt:
            return []
        self.status[index] = _QUEUED
        return [Dispatch(index, attempt)]

    def cancel(self) -> list[Action]:
        """Cancel the run: every unfinished step is cancelled and the run ends now."""
        if self.finished:
            return []
        cancelled = [i for i, s in enumerate(self.status) if not s.finished]
        for i in cancelled:
            self.status[i] = _CANCELLED
        self.unfinished = 0
        self.run_status = RunStatus.CANCELLED
        actions: list[Action] = []
        if cancelled:
            actions.append(Skip(tuple(cancelled), StepStatus.CANCELLED))
        actions.append(Finish(RunStatus.CANCELLED))
        return actions

    def lost_worker(self, index: int, attempt: int) -> list[Action] | None:
        """The worker running ``attempt`` of step ``index`` vanished: dispatch a new attempt.

        A lost attempt does not use up the step's retries (the step did not fail), but a
        step whose workers keep vanishing fails after :data:`MAX_LOST` lost attempts.
        """
        status = self.status
        if self.attempts[index] != attempt or (
            status[index] is not _QUEUED and status[index] is not _RUNNING
        ):
            return None
        lost = self.lost[index] = self.lost.get(index, 0) + 1
        if lost > MAX_LOST:
            error = ErrorInfo.from_exception(
                WorkerLostError(f"the worker running this step vanished {lost} times"),
                retryable=False,
            )
            return self.failed(index, attempt, error)
        self.attempts[index] = attempt + 1
        status[index] = _QUEUED
        return [Dispatch(index, attempt + 1)]

    def unconfirmed(self, index: int, attempt: int) -> list[Action] | None:
        """The broker did not confirm the dispatch of ``attempt`` of step ``index``: it may
        or may not hold it, so dispatch a new attempt (never the same one twice).  None if
        that attempt is superseded, or was seen running (it did reach a worker)."""
        if self.attempts[index] != attempt or self.status[index] is not _QUEUED:
            return None
        self.attempts[index] = attempt + 1
        return [Dispatch(index, attempt + 1)]

    def halt(self, status: RunStatus) -> None:
        """The run ended outside the schedule (the store refused its events for good): it
        takes ``status`` and nothing of it goes on."""
        self.run_status = status
        self.unfinished = 0

    def in_flight(self) -> list[int]:
        """Steps dispatched and not yet finished (queued or running)."""
        return [i for i, s in enumerate(self.status) if s is _QUEUED or s is _RUNNING]

    def _skip_dependents(self, index: int) -> list[int]:
        steps, status = self.plan.steps, self.status
        skipped: list[int] = []
        stack = list(steps[index].dependents)
        while stack:
            d = stack.pop()
            if status[d] is _PENDING:
                status[d] = _SKIPPED
                skipped.append(d)
                stack.extend(steps[d].dependents)
        self.unfinished -= len(skipped)
        skipped.sort()
        return skipped

    def _skip_waiting(self) -> list[int]:
        skipped = [i for i, s in enumerate(self.status) if s is _PENDING or s is _RETRYING]
        for i in skipped:
            self.status[i] = _SKIPPED
        self.unfinished -= len(skipped)
        return skipped

    def _finish(self) -> Finish:
        self.run_status = RunStatus.FAILED if self.errors else RunStatus.SUCCEEDED
        return Finish(self.run_status)


def _true(output: Any) -> bool:
    """Whether a condition step's encoded output is true (a value in the object store is)."""
    if not isinstance(output, bytes):
        return bool(output)
    try:
        value = codec.decode(output)
    except CodecError:
        return False
    return isinstance(value, codec.ObjectRef) or bool(value)
