"""Maps in the pure core: expansion appends one step per item, collects their outputs, and
a plan expanded again from the log restores the same schedule."""

from __future__ import annotations

import pytest

from aexec import codec
from aexec.errors import PlanError
from aexec.limits import StepLimits
from aexec.plan import Plan, StepSpec, build
from aexec.scheduling import Collect, Dispatch, Expand, Fail, RecordedStep, RunState
from aexec.types import RunStatus, StepStatus


def mapped() -> Plan:
    return build(
        "p",
        [
            StepSpec("src", "n"),
            StepSpec("each", "work", queue="q", deps=("src",), map_over="src"),
            StepSpec("sum", "n", deps=("each",)),
        ],
    )


def test_expand_appends_keyed_steps_taking_the_map_inputs_and_leaves_indices_alone() -> None:
    plan = mapped()
    expanded = plan.expand(1, 3)
    assert [s.key for s in expanded.steps] == [
        "src",
        "each",
        "sum",
        "each[0]",
        "each[1]",
        "each[2]",
    ]
    child = expanded.step("each[2]")
    assert (child.name, child.queue, child.deps, child.dependents) == ("work", "q", (0,), (1,))
    assert child.element == 2 and child.map_over == 0 and not child.is_map
    assert expanded.step("each").deps == (0, 3, 4, 5) and expanded.collected(1) == (3, 4, 5)
    assert expanded.digest == plan.digest and expanded.expanded == {1}
    with pytest.raises(PlanError, match="not a map"):
        plan.expand(0, 1)


def test_the_steps_of_a_map_keep_its_version_and_limits() -> None:
    limits = StepLimits(concurrency=2)
    plan = build(
        "p",
        [
            StepSpec("src", "n"),
            StepSpec("each", "work", deps=("src",), map_over="src", version="2", limits=limits),
        ],
    )
    child = plan.expand(1, 2).step("each[1]")
    assert (child.version, child.address, child.route) == ("2", "work@2", "default@2")
    assert child.limits == limits


def test_a_step_a_map_expanded_into_is_declared_by_its_map() -> None:
    plan = mapped()
    assert plan.declared("each[7]") is plan.step("each")  # not expanded in this plan
    assert plan.declared("each[a[1]]") is plan.step("each")  # a label with brackets
    assert plan.declared("src") is plan.step("src")
    assert plan.declared("src[0]") is None and plan.declared("nope") is None


def test_a_list_expands_dispatches_every_item_and_collects_in_order() -> None:
    plan = mapped()
    state = RunState(plan)
    state.start()
    actions = state.succeeded(0, 1, codec.encode(["a", "b"]))
    assert actions == [Expand(1, 2, 3), Dispatch(3, 1), Dispatch(4, 1)]
    assert state.item(4) == codec.encode("b")
    state.succeeded(4, 1, codec.encode(2))
    actions = state.succeeded(3, 1, codec.encode(1))
    assert actions is not None
    (collect,) = [a for a in actions if isinstance(a, Collect)]
    assert codec.decode(collect.output) == [1, 2]
    assert Dispatch(2, 1) in actions


def test_an_empty_list_collects_at_once_and_a_non_list_fails_the_map() -> None:
    state = RunState(mapped())
    state.start()
    actions = state.succeeded(0, 1, codec.encode([]))
    assert actions is not None and Dispatch(2, 1) in actions
    assert state.outputs[1] == codec.encode([])
    state = RunState(mapped())
    state.start()
    actions = state.succeeded(0, 1, codec.encode("abc"))
    assert actions is not None
    (fail,) = [a for a in actions if isinstance(a, Fail)]
    assert fail.error.type == "MapError" and "maps over a str, not a list" in fail.error.message
    assert state.run_status is RunStatus.FAILED


def test_restore_of_an_expanded_plan_goes_on_where_it_was() -> None:
    live = RunState(mapped())
    live.start()
    live.succeeded(0, 1, codec.encode([10, 20, 30]))
    live.succeeded(3, 1, codec.encode(1))
    recorded = [
        RecordedStep(status, live.attempts[i], live.outputs[i])
        for i, status in enumerate(live.status)
    ]
    restored = RunState(mapped().expand(1, 3))
    actions = restored.restore(recorded, started=True)
    assert actions == [Dispatch(4, 2), Dispatch(5, 2)]  # queued: new attempts
    assert restored.item(5) == codec.encode(30)  # the list split again
    restored.succeeded(4, 2, codec.encode(2))
    actions = restored.succeeded(5, 2, codec.encode(3))
    assert actions is not None and Dispatch(2, 1) in actions
    assert codec.decode(restored.outputs[1]) == [1, 2, 3]
    assert restored.status[1] is StepStatus.SUCCEEDED


def test_the_rows_and_the_restored_plan_take_the_labels_of_the_expansion() -> None:
    from aexec.events import Event, EventKind
    from aexec.store import fold

    event = Event(
        EventKind.STEP_EXPANDED,
        "r",
        1.0,
        "each",
        0,
        {"count": 2, "position": 3, "name": "work", "queue": "q", "labels": ["x", "y"]},
    )
    assert fold.expansion(event) == [(3, "each[x]", "work", "q"), (4, "each[y]", "work", "q")]
    expanded = mapped().expand(1, 2, fold.labels(event))
    assert [s.key for s in expanded.steps][3:] == ["each[x]", "each[y]"]
