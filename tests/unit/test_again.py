"""``aexec.again`` in the pure core: a step waits to run again, within its ``max_wait``."""

from __future__ import annotations

import math

import pytest

from aexec import codec
from aexec.directives import Again, again
from aexec.plan import Plan, StepSpec, build
from aexec.scheduling import Dispatch, Fail, Finish, Later, RecordedStep, RunState, Wait
from aexec.types import RunStatus, StepStatus


def plan(max_wait: float | None = None) -> Plan:
    return build(
        "p", [StepSpec("poll", "poll", max_wait=max_wait), StepSpec("next", "n", deps=("poll",))]
    )


def test_a_step_asking_again_waits_as_its_next_attempt_spending_no_retry() -> None:
    state = RunState(plan())
    state.start()
    assert state.again(0, 1, 30.0, "not yet", now=100.0) == [Wait(0, 2, 30.0, "not yet", 100.0)]
    assert state.status[0] is StepStatus.RETRYING and state.failures[0] == 0
    assert state.again(0, 1, 30.0, "twice", now=100.0) is None  # a duplicate
    assert state.retry_due(0, 2) == [Dispatch(0, 2)]
    assert state.again(0, 2, 30.0, "still not", now=131.0) == [
        Wait(0, 3, 30.0, "still not", 100.0)  # since: the first time it asked
    ]


def test_max_wait_fails_the_step_once_its_deadline_passed_and_bounds_the_last_wait() -> None:
    state = RunState(plan(max_wait=60.0))
    state.start()
    assert state.again(0, 1, 45.0, "ceph", now=100.0) == [Wait(0, 2, 45.0, "ceph", 100.0)]
    state.retry_due(0, 2)
    (wait,) = state.again(0, 2, 45.0, "ceph", now=145.0)  # type: ignore[misc]
    assert isinstance(wait, Wait) and wait.delay == pytest.approx(15.0)  # the deadline
    state.retry_due(0, 3)
    actions = state.again(0, 3, 45.0, "ceph degraded", now=160.0)
    assert actions is not None
    (fail,) = [a for a in actions if isinstance(a, Fail)]
    assert fail.error.type == "WaitTimeoutError"
    assert "max_wait=60 s): ceph degraded" in fail.error.message
    assert [a for a in actions if isinstance(a, Finish)] == [Finish(RunStatus.FAILED)]


def test_a_wait_is_restored_with_the_time_it_has_left() -> None:
    state = RunState(plan(max_wait=600.0))
    steps = [RecordedStep(StepStatus.RETRYING, 2), RecordedStep(StepStatus.PENDING, 0)]
    actions = state.restore(steps, started=True, waits={0: (130.0, 100.0)}, now=110.0)
    assert actions == [Later(0, 3, 20.0)]
    assert state.since[0] == 100.0
    assert state.retry_due(0, 3) == [Dispatch(0, 3)]
    overdue = RunState(plan())
    assert overdue.restore(steps, started=True, waits={0: (130.0, 100.0)}, now=200.0) == [
        Later(0, 3, 0.0)
    ]


def test_again_travels_as_an_output_and_refuses_nonsense() -> None:
    encoded = codec.encode(again(after=5, reason="later"))
    assert codec.directive_of(encoded) == Again(5.0, "later")
    for bad in (-1, math.nan, math.inf, "5", True):
        with pytest.raises(ValueError, match="a number of seconds"):
            again(bad)  # type: ignore[arg-type]
    assert codec.directive_of(codec.encode([1])) is None
