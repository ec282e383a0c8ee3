"""Conditional branches in the pure core: skips by decision, ``when`` conditions, joins.

A decision (a step returned ``aexec.skip``, or its ``when`` condition was false) skips a
step; each dependent is settled once all its inputs are in: one that accepts missing inputs
runs with None in their place, any other is skipped too.  A failure still skips every
dependent at once.  Restoring from the recorded steps rebuilds the same schedule.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from aexec import codec, step
from aexec.errors import DefinitionError, PlanError
from aexec.plan import Plan, StepSpec, build
from aexec.scheduling import (
    NONE_OUTPUT,
    Action,
    Dispatch,
    Finish,
    RecordedStep,
    RunState,
    Skip,
)
from aexec.types import ErrorInfo, RunStatus, StepStatus

TRUE, FALSE, ONE = codec.encode(True), codec.encode(False), codec.encode(1)
BOOM = ErrorInfo("ValueError", "boom", retryable=False)


def make_plan(
    deps: dict[str, Sequence[str]],
    *,
    join: Sequence[str] = (),
    when: dict[str, str] | None = None,
) -> Plan:
    when = when or {}
    return build(
        "p",
        [
            StepSpec(key, "noop", deps=tuple(ds), when=when.get(key), accept_missing=key in join)
            for key, ds in deps.items()
        ],
    )


def dispatched(plan: Plan, actions: Sequence[Action] | None) -> list[str]:
    assert actions is not None
    return [plan.steps[a.index].key for a in actions if isinstance(a, Dispatch)]


def skipped(plan: Plan, actions: Sequence[Action] | None) -> dict[str, str]:
    assert actions is not None
    return {plan.steps[i].key: a.reason for a in actions if isinstance(a, Skip) for i in a.indices}


def finished(actions: Sequence[Action] | None) -> RunStatus | None:
    assert actions is not None
    ends = [a.status for a in actions if isinstance(a, Finish)]
    return ends[0] if ends else None


def recorded(state: RunState) -> list[RecordedStep]:
    return [
        RecordedStep(s, state.attempts[i], state.outputs[i], state.errors.get(i), 0)
        for i, s in enumerate(state.status)
    ]


# a -> b -> c (plain), a -> j (join of b and d), d independent
BRANCHES = {"a": [], "b": ["a"], "c": ["b"], "d": [], "j": ["b", "d"]}


def test_a_step_that_skips_itself_skips_its_dependents_and_the_run_succeeds() -> None:
    plan = make_plan(BRANCHES, join=["j"])
    state = RunState(plan)
    state.start()
    assert dispatched(plan, state.succeeded(plan.index["a"], 1, ONE)) == ["b"]
    actions = state.skipped(plan.index["b"], 1, "nothing to do")
    assert skipped(plan, actions) == {"b": "nothing to do", "c": "its input 'b' was skipped"}
    assert dispatched(plan, actions) == []  # j still waits for d
    actions = state.succeeded(plan.index["d"], 1, ONE)
    assert dispatched(plan, actions) == ["j"]  # accepts missing inputs
    assert state.outputs[plan.index["b"]] == NONE_OUTPUT
    assert finished(state.succeeded(plan.index["j"], 1, ONE)) is RunStatus.SUCCEEDED
    assert state.status[plan.index["c"]] is StepStatus.SKIPPED


def test_a_skip_is_settled_for_a_dependent_only_once_all_its_inputs_are_in() -> None:
    plan = make_plan({"a": [], "b": [], "c": ["a", "b"]})
    state = RunState(plan)
    state.start()
    assert skipped(plan, state.skipped(plan.index["a"], 1, "no")) == {"a": "no"}
    assert state.status[plan.index["c"]] is StepStatus.PENDING
    actions = state.succeeded(plan.index["b"], 1, ONE)
    assert skipped(plan, actions) == {"c": "its input 'a' was skipped"}
    assert finished(actions) is RunStatus.SUCCEEDED


def test_a_failure_still_skips_the_joins_after_it_and_fails_the_run() -> None:
    plan = make_plan({"a": [], "b": [], "j": ["a", "b"]}, join=["j"])
    state = RunState(plan)
    state.start()
    state.skipped(plan.index["a"], 1, "no")
    actions = state.failed(plan.index["b"], 1, BOOM)
    assert skipped(plan, actions) == {"j": ""}
    assert finished(actions) is RunStatus.FAILED


def test_when_runs_a_step_only_if_its_condition_is_true() -> None:
    plan = make_plan(
        {"ok": [], "yes": ["ok"], "after": ["yes"], "j": ["after"]},
        when={"yes": "ok"},
        join=["j"],
    )
    for output, expected in ((TRUE, ["yes"]), (codec.encode([1]), ["yes"]), (FALSE, ["j"])):
        state = RunState(plan)
        state.start()
        actions = state.succeeded(plan.index["ok"], 1, output)
        assert dispatched(plan, actions) == expected
    assert skipped(plan, actions) == {
        "yes": "its condition 'ok' is false",
        "after": "its input 'yes' was skipped",
    }


def test_a_skipped_condition_skips_even_a_step_that_accepts_missing_inputs() -> None:
    plan = make_plan({"ok": [], "x": ["ok"]}, when={"x": "ok"}, join=["x"])
    state = RunState(plan)
    state.start()
    actions = state.skipped(plan.index["ok"], 1, "no")
    assert skipped(plan, actions)["x"] == "its condition 'ok' was skipped"
    assert finished(actions) is RunStatus.SUCCEEDED


def test_a_duplicate_or_stale_skip_changes_nothing() -> None:
    plan = make_plan({"a": [], "b": ["a"]})
    state = RunState(plan)
    state.start()
    assert state.skipped(plan.index["a"], 2, "stale") is None
    assert state.skipped(plan.index["a"], 1, "no") is not None
    assert state.skipped(plan.index["a"], 1, "no") is None
    assert state.succeeded(plan.index["a"], 1, ONE) is None


def test_a_long_chain_of_skips_settles_without_recursion() -> None:
    n = 5000
    plan = make_plan({f"s{i}": [f"s{i - 1}"] if i else [] for i in range(n)})
    state = RunState(plan)
    state.start()
    actions = state.skipped(0, 1, "no")
    assert len(skipped(plan, actions)) == n
    assert finished(actions) is RunStatus.SUCCEEDED


def test_restore_finds_the_decisions_again_and_goes_on_from_them() -> None:
    plan = make_plan(BRANCHES, join=["j"])
    live = RunState(plan)
    live.start()
    live.succeeded(plan.index["a"], 1, ONE)
    live.skipped(plan.index["b"], 1, "no")
    restored = RunState(plan)
    actions = restored.restore(recorded(live), started=True)
    assert restored.missing == live.missing == {plan.index["b"], plan.index["c"]}
    assert dispatched(plan, actions) == ["d"]  # queued: a new attempt
    assert dispatched(plan, restored.succeeded(plan.index["d"], 2, ONE)) == ["j"]


def test_restore_tells_a_skip_after_a_failure_from_a_decision() -> None:
    plan = make_plan({"a": [], "b": ["a"], "d": [], "j": ["b", "d"]}, join=["j"])
    live = RunState(plan)
    live.start()
    live.failed(plan.index["a"], 1, BOOM)  # b and j skipped by the failure
    live.succeeded(plan.index["d"], 1, ONE)
    restored = RunState(plan)
    actions = restored.restore(recorded(live), started=True)
    assert restored.missing == set()
    assert dispatched(plan, actions) == []
    assert restored.finished and restored.run_status is RunStatus.FAILED


def test_restore_settles_steps_whose_inputs_are_all_in() -> None:
    # Recorded mid-way: the condition succeeded false, its dependent not yet settled.
    plan = make_plan({"ok": [], "x": ["ok"], "j": ["x"]}, when={"x": "ok"}, join=["j"])
    steps = [
        RecordedStep(StepStatus.SUCCEEDED, 1, FALSE),
        RecordedStep(StepStatus.PENDING, 0),
        RecordedStep(StepStatus.PENDING, 0),
    ]
    state = RunState(plan)
    actions = state.restore(steps, started=True)
    assert skipped(plan, actions) == {"x": "its condition 'ok' is false"}
    assert dispatched(plan, actions) == ["j"]


def test_a_plan_keeps_conditions_and_joins_through_its_wire_form() -> None:
    plan = make_plan({"ok": [], "x": ["ok"], "j": ["x"]}, when={"x": "ok"}, join=["j"])
    again = Plan.from_bytes(plan.to_bytes())
    assert again.digest == plan.digest
    assert again.step("x").when == plan.index["ok"] and again.step("j").accept_missing
    plain = make_plan({"a": [], "b": ["a"]})
    assert all(len(s) == 8 for s in plain.to_wire()[2])  # plans without options: as before


def test_a_condition_must_be_an_input_and_a_join_flag_a_boolean() -> None:
    with pytest.raises(PlanError, match="its condition must be one of its inputs"):
        build("p", [StepSpec("a", "n"), StepSpec("b", "n", when="a")])
    with pytest.raises(PlanError, match="accept_missing must be a boolean"):
        build("p", [StepSpec("a", "n", accept_missing=1)])  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="accept_missing must be True or False"):
        step(accept_missing="yes")(lambda: None)  # type: ignore[call-overload]


def test_a_map_over_a_skipped_list_is_skipped_even_if_it_accepts_missing_inputs() -> None:
    plan = build(
        "p",
        [
            StepSpec("src", "n"),
            StepSpec("each", "n", deps=("src",), map_over="src", accept_missing=True),
            StepSpec("after", "n", deps=("each",), accept_missing=True),
        ],
    )
    state = RunState(plan)
    state.start()
    actions = state.skipped(0, 1, "nothing")
    assert skipped(plan, actions)["each"] == "the list it maps over, 'src', was skipped"
    assert dispatched(plan, actions) == ["after"]
