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
class Wait:
    """Step ``index`` asked to run again (:func:`aexec.again`): dispatch it as ``attempt``
    after ``delay`` s.  ``since``: when it first asked, the start of its ``max_wait``."""

    index: int
    attempt: int
    delay: float
    reason: str
    since: float


@dataclass(frozen=True, slots=True)
class Later:
    """Dispatch step ``index`` as ``attempt`` after ``delay`` s (a wait restored)."""

    index: int
    attempt: int
    delay: float


@dataclass(frozen=True, slots=True)
class Expand:
    """Map ``index`` was expanded into ``count`` steps, appended to the plan (indices
    ``first`` to ``first + count - 1``, keyed by ``labels`` if it has a ``map_key``);
    their dispatches follow."""

    index: int
    count: int
    first: int
    labels: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Collect:
    """Every step of map ``index`` finished: it succeeded with the list of their outputs."""

    index: int
    output: bytes


@dataclass(frozen=True, slots=True)
class Finish:
    """The run is over; emitted exactly once per run."""

    status: RunStatus


Action = Dispatch | Retry | Fail | Skip | Wait | Later | Expand | Collect | Finish


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
        "dynamic",
        "errors",
        "fail_fast",
        "failures",
        "items",
        "lists",
        "lost",
        "missing",
        "outputs",
        "plan",
        "run_status",
        "sample",
        "since",
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
        self.dynamic = any(s.when is not None or s.map_over is not None for s in plan.steps)
        self.items: dict[int, list[bytes]] = {}  # map → its list, item by item (encoded)
        # A map's list that the step returning it put in the object store, loaded by the
        # engine (by that step's index): the maps read it here.
        self.lists: dict[int, bytes] = {}
        self.since: dict[int, float] = {}  # step → when it first asked to run again
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

    def restore(
        self,
        steps: Sequence[RecordedStep],
        *,
        started: bool,
        waits: Mapping[int, tuple[float, float]] | None = None,
        now: float = 0.0,
    ) -> list[Action]:
        """Rebuild the schedule of a run another coordinator drove, from its recorded steps
        in plan order, and return what to do now.

        Steps recorded as queued whose message the broker confirmed stay queued: their
        message is in its queue (a worker that takes it reports to the reply queue of the
        coordinator that sent it).  Those never confirmed may never have reached the
        broker: they are dispatched again as new attempts (a stale attempt's completion is
        ignored when it arrives), which spend no retry.  Running steps stay running: their
        worker's heartbeats, or their absence, decide.  Retrying steps lost their backoff
        timer and are dispatched again at once, unless they wait to run again
        (:func:`aexec.again`): ``waits`` gives those their ``(due, since)`` times, and they
        are dispatched at ``due`` (``now`` is the time now, on the clock of ``due``).
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
        waits = waits or {}
        for i, recorded in enumerate(steps):
            status, attempts = recorded.status, recorded.attempts
            if status is _RETRYING and i in waits:
                due, self.since[i] = waits[i]
                self.status[i] = _RETRYING
                self.attempts[i] = attempts + 1
                actions.append(Later(i, attempts + 1, max(0.0, due - now)))
            elif status is _QUEUED and not recorded.unconfirmed:
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
            if steps[d].is_map and d in self.plan.expanded:
                self._collect(d, actions)
                for e in steps[d].dependents:
                    waiting[e] -= 1
                    if waiting[e] == 0 and status[e] is _PENDING:
                        ready.append(e)
                continue
            reason = self._skip_reason(d)
            if reason is None and steps[d].is_map:
                if self._expand(d, actions):
                    steps = self.plan.steps
                    status, waiting, attempts = self.status, self.waiting, self.attempts
                    if waiting[d] == 0:  # an empty list: collected at once
                        ready.append(d)
                continue
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

    def _expand(self, index: int, actions: list[Action]) -> bool:
        """Expand map ``index``, whose inputs are all in, into one step per item of its list
        and dispatch them; fail it if that input is not a list (False)."""
        template = self.plan.steps[index]
        assert template.map_over is not None
        listed = self.lists.get(template.map_over, self.outputs[template.map_over])
        items = _items(listed)
        labels = None
        if template.map_key is not None and not isinstance(items, str):
            labels = _labels(listed, template.map_key)
            if isinstance(labels, str):
                items = labels
        if isinstance(items, str):
            error = ErrorInfo(
                "MapError", f"cannot map step {template.key!r}: {items}", retryable=False
            )
            self.status[index] = _FAILED
            self.errors[index] = error
            self.unfinished -= 1
            actions.append(Fail(index, 0, error))
            skipped = self._skip_dependents(index)
            if skipped:
                actions.append(Skip(tuple(skipped)))
            return False
        count, first = len(items), len(self.plan.steps)
        self.plan = self.plan.expand(index, count, labels)
        self.items[index] = items
        self.status.extend([_QUEUED] * count)
        self.attempts.extend([1] * count)
        self.failures.extend([0] * count)
        self.waiting.extend([0] * count)
        self.outputs.extend([None] * count)
        self.waiting[index] = count
        self.unfinished += count
        actions.append(Expand(index, count, first, None if labels is None else tuple(labels)))
        actions.extend(Dispatch(i, 1) for i in range(first, first + count))
        return True

    def _collect(self, index: int, actions: list[Action]) -> None:
        """Every step of map ``index`` finished: it succeeds with their outputs, in order
        (None for a step skipped by a decision)."""
        outputs = self.outputs
        output = codec.encode([codec.embed(outputs[c]) for c in self.plan.collected(index)])
        self.status[index] = _SUCCEEDED
        outputs[index] = output
        self.unfinished -= 1
        actions.append(Collect(index, output))

    def item(self, index: int) -> bytes:
        """The item of its map's list that step ``index`` (a step of a map) takes, encoded."""
        step = self.plan.steps[index]
        template = step.dependents[0]
        items = self.items.get(template)
        if items is None:  # restored: split the list again
            assert step.map_over is not None
            found = _items(self.lists.get(step.map_over, self.outputs[step.map_over]))
            assert not isinstance(found, str)  # it was split once already
            items = self.items[template] = found
        assert step.element is not None
        return items[step.element]

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
        if step.map_over in missing and step.element is None:
            return f"the list it maps over, {self.plan.steps[step.map_over].key!r}, was skipped"
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
        if self.missing or self.dynamic:
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
        return self._fail(index, attempt, error)

    def _fail(self, index: int, attempt: int, error: ErrorInfo) -> list[Action]:
        """Step ``index`` fails for good on ``attempt``; its dependents are skipped."""
        self.status[index] = _FAILED
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

    def again(
        self, index: int, attempt: int, after: float, reason: str, now: float
    ) -> list[Action] | None:
        """Step ``index`` asked on ``attempt`` (at ``now``) to run again in ``after`` s: it
        will, as the next attempt (no retry spent), unless its ``max_wait`` since it first
        asked is over: then it fails.  The last check is at that deadline.  None when the
        event is stale or a duplicate."""
        status = self.status
        if self.attempts[index] != attempt or (
            status[index] is not _QUEUED and status[index] is not _RUNNING
        ):
            return None
        step = self.plan.steps[index]
        since = self.since.setdefault(index, now)
        if step.max_wait is not None:
            left = since + step.max_wait - now
            if left <= 0:
                error = ErrorInfo(
                    "WaitTimeoutError",
                    f"step {step.key!r} was still not ready after {now - since:.3g} s "
                    f"(max_wait={step.max_wait:g} s): {reason or 'no reason given'}",
                    retryable=False,
                )
                return self._fail(index, attempt, error)
            after = min(after, left)
        if self.run_status is not RunStatus.RUNNING or (self.fail_fast and self.errors):
            return self._fail(
                index,
                attempt,
                ErrorInfo("WaitTimeoutError", "the run fails: it waits no more", retryable=False),
            )
        status[index] = _RETRYING
        self.attempts[index] = attempt + 1
        return [Wait(index, attempt + 1, after, reason, since)]

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


def _items(output: Any) -> list[bytes] | str:
    """The items of the list a map runs over, each encoded; or why there is none."""
    if not isinstance(output, bytes):
        return "its input is not a recorded output"
    try:
        value = codec.decode(output)
    except CodecError as exc:
        return f"its input does not decode: {exc}"
    if isinstance(value, codec.ObjectRef):
        return (
            "the list it maps over is in the object store (larger than the inline "
            "threshold): return a shorter list (of references, e.g. keys or paths)"
        )
    if not isinstance(value, list):
        return f"it maps over a {type(value).__name__}, not a list"
    return [codec.encode(item) for item in value]


def _labels(output: Any, field: str) -> list[str] | str:
    """The keys of a map's steps: the ``field`` of each item; or why there are none."""
    value = codec.decode(output)  # it decoded once already, as a list
    labels: list[str] = []
    for i, item in enumerate(value):
        label = item.get(field) if isinstance(item, dict) else None
        if isinstance(label, bool) or not isinstance(label, str | int) or label == "":
            return f"item {i} has no {field!r} (a string or an integer) to key its step"
        labels.append(str(label))
    seen: set[str] = set()
    for label in labels:
        if label in seen:
            return f"two items have {field!r} {label!r}: keys must be unique"
        seen.add(label)
    return labels
