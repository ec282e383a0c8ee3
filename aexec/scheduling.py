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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from aexec.errors import WorkerLostError
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
    """These steps will not run: ``status`` is ``skipped`` (upstream failed) or ``cancelled``."""

    indices: tuple[int, ...]
    status: StepStatus = StepStatus.SKIPPED


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


MAX_LOST = 5
"""A step whose worker vanished this many times fails instead of being dispatched again."""


class RunState:
    """One run's schedule.  ``outputs`` holds each succeeded step's (opaque) output.

    A step's retries are counted in ``failures``, its attempts that really failed: an
    attempt lost with its worker, dispatched again after a takeover, or whose dispatch was
    not confirmed spends none of them (``attempts`` counts every dispatch).
    """

    __slots__ = (
        "attempts",
        "errors",
        "fail_fast",
        "failures",
        "lost",
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
        self.unfinished = n
        self.run_status = RunStatus.PENDING

    @property
    def finished(self) -> bool:
        return self.run_status.finished

    def start(self) -> list[Action]:
        """Begin the run: dispatch every step without inputs."""
        if self.run_status is not RunStatus.PENDING:
            return []
        self.run_status = RunStatus.RUNNING
        actions: list[Action] = []
        status, attempts = self.status, self.attempts
        for i, waiting in enumerate(self.waiting):
            if waiting == 0:
                status[i] = _QUEUED
                attempts[i] = 1
                actions.append(Dispatch(i, 1))
        if self.unfinished == 0:
            actions.append(self._finish())
        return actions

    def restore(self, steps: Sequence[RecordedStep], *, started: bool) -> list[Action]:
        """Rebuild the schedule of a run another coordinator drove, from its recorded steps
        in plan order, and return what to do now.

        Steps recorded as queued may never have reached the broker: they are dispatched
        again as new attempts (a stale attempt's completion is ignored when it arrives),
        which spend no retry.  Running steps stay running: their worker's heartbeats, or
        their absence, decide.  Retrying steps lost their backoff timer and are
        dispatched again at once.
        """
        if self.run_status is not RunStatus.PENDING:
            return []
        if not started:
            return self.start()
        self.run_status = RunStatus.RUNNING
        plan_steps = self.plan.steps
        actions: list[Action] = []
        for i, (status, attempts, output, error, failures) in enumerate(steps):
            self.attempts[i] = attempts
            self.failures[i] = failures
            if status.finished:
                self.status[i] = status
                self.unfinished -= 1
                if status is _SUCCEEDED:
                    self.outputs[i] = output
                    for d in plan_steps[i].dependents:
                        self.waiting[d] -= 1
                elif status is _FAILED and error is not None:
                    self.errors[i] = error
            elif status is _RUNNING:
                self.status[i] = _RUNNING
        for i, (status, attempts, *_) in enumerate(steps):
            if (
                status is _QUEUED
                or status is _RETRYING
                or (status is _PENDING and self.waiting[i] == 0 and self._inputs_ok(i))
            ):
                self.status[i] = _QUEUED
                self.attempts[i] = attempts + 1
                actions.append(Dispatch(i, attempts + 1))
        if self.unfinished == 0:
            actions.append(self._finish())
        return actions

    def _inputs_ok(self, index: int) -> bool:
        return all(self.status[d] is _SUCCEEDED for d in self.plan.steps[index].deps)

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
        for d in self.plan.steps[index].dependents:
            waiting[d] -= 1
            if waiting[d] == 0 and status[d] is _PENDING:
                status[d] = _QUEUED
                attempts[d] = 1
                actions.append(Dispatch(d, 1))
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
