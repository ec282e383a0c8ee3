"""Rerun from failure, pure: which steps are reused, and a schedule that starts with them."""

from __future__ import annotations

from aexec.plan import StepSpec, build
from aexec.rerun import reusable
from aexec.scheduling import Dispatch, Finish, RunState
from aexec.types import RunStatus, StepStatus

CALL_A = b"\x92\x90\x80"


def plan_of(call_b: bytes = CALL_A):  # type: ignore[no-untyped-def]
    return build(
        "p",
        [
            StepSpec("a", "load"),
            StepSpec("b", "transform", deps=("a",), call=call_b),
            StepSpec("c", "publish", deps=("b",)),
            StepSpec("d", "side"),
        ],
    )


def test_succeeded_steps_with_reused_inputs_are_reused() -> None:
    plan = plan_of()
    # b failed (so c was skipped); a and d succeeded.
    reused = reusable(plan, {"a": b"A", "d": b"D"}, plan)
    assert reused == {plan.index["a"]: b"A", plan.index["d"]: b"D"}


def test_a_step_whose_call_changed_runs_again_with_everything_downstream() -> None:
    before, after = plan_of(), plan_of(call_b=b"\x92\x91\x05\x80")
    reused = reusable(before, {"a": b"A", "b": b"B", "c": b"C", "d": b"D"}, after)
    assert sorted(after.steps[i].key for i in reused) == ["a", "d"]


def test_a_step_missing_from_the_earlier_plan_is_not_reused() -> None:
    before = build("p", [StepSpec("a", "load")])
    assert reusable(before, {"a": b"A"}, plan_of()) == {plan_of().index["a"]: b"A"}
    assert reusable(before, {"zzz": b"Z"}, plan_of()) == {}


def test_a_schedule_starting_with_reused_steps_dispatches_only_the_rest() -> None:
    plan = plan_of()
    state = RunState(plan)
    state.reuse({plan.index["a"]: b"A", plan.index["d"]: b"D"})
    assert state.start() == [Dispatch(plan.index["b"], 1)]
    assert state.status[plan.index["d"]] is StepStatus.SUCCEEDED
    actions = state.succeeded(plan.index["b"], 1, b"B")
    assert actions == [Dispatch(plan.index["c"], 1)]
    assert state.succeeded(plan.index["c"], 1, b"C") == [Finish(RunStatus.SUCCEEDED)]
    assert state.outputs[plan.index["a"]] == b"A"


def test_a_schedule_with_every_step_reused_finishes_at_once() -> None:
    plan = plan_of()
    state = RunState(plan)
    state.reuse({s.index: s.key.encode() for s in plan.steps})
    assert state.start() == [Finish(RunStatus.SUCCEEDED)]
