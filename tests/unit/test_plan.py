"""Execution plans: validated, topologically ordered, serialisable, identified by a digest."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from typing import Any

import msgpack
import pytest

from aexec import codec
from aexec.codec import Slot
from aexec.errors import PlanError
from aexec.limits import StepLimits
from aexec.plan import EMPTY_CALL, MAX_PRIORITY, NULL_RESULT, Plan, StepSpec, build, make_spec
from aexec.retry import RetryPolicy


def spec(key: str, *deps: str, **options: Any) -> StepSpec:
    return StepSpec(key=key, name=options.pop("name", "noop"), deps=deps, **options)


def keys(plan: Plan) -> list[str]:
    return [s.key for s in plan.steps]


def test_specs_already_in_dependency_order_keep_their_order() -> None:
    plan = build("p", [spec("z"), spec("a", "z"), spec("m"), spec("b", "a", "m")])
    assert keys(plan) == ["z", "a", "m", "b"]


def test_build_orders_steps_topologically() -> None:
    plan = build("p", [spec("c", "b"), spec("b", "a"), spec("a")])
    assert keys(plan) == ["a", "b", "c"]


def test_build_takes_the_earliest_declared_ready_step_first() -> None:
    plan = build("p", [spec("late", "root"), spec("free"), spec("root"), spec("x", "free")])
    assert keys(plan) == ["free", "root", "late", "x"]


def test_every_step_comes_after_its_dependencies() -> None:
    plan = build(
        "p",
        [spec("e", "d", "b"), spec("d", "c"), spec("b", "a"), spec("c", "a"), spec("a")],
    )
    for step in plan.steps:
        assert all(dep < step.index for dep in step.deps)
        assert plan.steps[step.index] is step


def test_deps_are_indices_in_declared_order() -> None:
    plan = build("p", [spec("a"), spec("b"), spec("c", "b", "a")])
    assert plan.step("c").deps == (plan.index["b"], plan.index["a"])


def test_dependents_are_computed_and_deduplicated() -> None:
    plan = build("p", [spec("a"), spec("b", "a", "a"), spec("c", "a"), spec("d", "b", "c")])
    a, b, c, d = (plan.index[k] for k in "abcd")
    assert plan.steps[a].dependents == (b, c)
    assert plan.steps[b].dependents == (d,)
    assert plan.steps[c].dependents == (d,)
    assert plan.steps[d].dependents == ()
    assert plan.steps[b].deps == (a, a)  # deps keep the caller's slots; dependents do not


def test_step_lookup_by_key() -> None:
    plan = build("p", [spec("a", name="load", queue="io", priority=3, timeout=5)])
    step = plan.step("a")
    assert (step.key, step.name, step.queue, step.priority) == ("a", "load", "io", 3)
    assert step.timeout == 5.0
    assert isinstance(step.timeout, float)
    with pytest.raises(PlanError, match="unknown step 'zz'"):
        plan.step("zz")


def test_plan_properties() -> None:
    plan = build(
        "p",
        [spec("a", queue="io"), spec("b", queue="gpu"), spec("c", "a", queue="io")],
        params=codec.encode({"n": 3}),
    )
    assert len(plan) == 3
    assert plan.queues == frozenset({"io", "gpu"})
    assert plan.parameters == {"n": 3}
    assert plan.pipeline == "p"


def test_an_empty_plan_is_valid() -> None:
    plan = build("empty", [])
    assert len(plan) == 0
    assert plan.result == NULL_RESULT
    assert plan.parameters == {}


def test_result_keys_become_result_deps() -> None:
    plan = build(
        "p", [spec("b"), spec("a")], result_keys=("a", "b"), result=codec.encode([Slot(0)])
    )
    assert plan.result_deps == (plan.index["a"], plan.index["b"])


# -- invalid plans ---------------------------------------------------------------------


def test_duplicate_key_is_rejected() -> None:
    with pytest.raises(PlanError, match="duplicate step key 'a'"):
        build("p", [spec("a"), spec("b"), spec("a")])


def test_unknown_dependency_is_rejected() -> None:
    with pytest.raises(PlanError, match="'b' depends on unknown step 'ghost'"):
        build("p", [spec("a"), spec("b", "ghost")])


def test_unknown_result_key_is_rejected() -> None:
    with pytest.raises(PlanError, match="unknown step 'ghost'"):
        build("p", [spec("a")], result_keys=("ghost",))


def test_a_cycle_is_rejected_and_named() -> None:
    with pytest.raises(PlanError, match="cycle") as info:
        build("p", [spec("root"), spec("a", "root", "c"), spec("b", "a"), spec("c", "b")])
    message = str(info.value)
    cycle = message.split(": ", 1)[1].split(" -> ")
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"a", "b", "c"}
    assert "root" not in message
    # Each arrow goes from a dependency to its dependent.
    deps = {"a": {"root", "c"}, "b": {"a"}, "c": {"b"}}
    for before, after in itertools.pairwise(cycle):
        assert before in deps[after]


def test_a_cycle_downstream_of_valid_steps_is_still_found() -> None:
    with pytest.raises(PlanError, match="cycle between steps") as info:
        build("p", [spec("a"), spec("x", "a", "y"), spec("y", "x"), spec("tail", "y")])
    assert str(info.value).endswith(("x -> y -> x", "y -> x -> y"))


def test_a_self_dependency_is_a_cycle() -> None:
    with pytest.raises(PlanError, match="cycle between steps: a -> a"):
        build("p", [spec("a", "a")])


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"key": ""}, "key"),
        ({"key": 3}, "key"),
        ({"name": ""}, "name"),
        ({"queue": ""}, "queue"),
        ({"queue": None}, "queue"),
        ({"priority": -1}, "priority"),
        ({"priority": MAX_PRIORITY + 1}, "priority"),
        ({"priority": 1.5}, "priority"),
        ({"priority": True}, "priority"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": "10"}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"call": "not bytes"}, "call"),
    ],
    ids=repr,
)
def test_bad_step_options_are_rejected(options: dict[str, Any], match: str) -> None:
    good = StepSpec(key="a", name="noop")
    with pytest.raises(PlanError, match=match):
        build("p", [dataclasses.replace(good, **options)])


def test_priority_bounds_are_inclusive() -> None:
    build("p", [spec("lo", priority=0), spec("hi", priority=MAX_PRIORITY)])


@pytest.mark.parametrize("name", ["", None, 5])
def test_bad_pipeline_name_is_rejected(name: Any) -> None:
    with pytest.raises(PlanError, match="pipeline name"):
        build(name, [spec("a")])


# -- serialisation and digest ----------------------------------------------------------


def rich_plan(**changes: Any) -> Plan:
    """A plan using every field; ``changes`` override one of them."""
    steps = [
        spec("load", name="load", queue="io", priority=2, timeout=30.0),
        spec(
            "render",
            "load",
            name="render",
            queue="gpu",
            priority=8,
            retry=RetryPolicy(3, 0.5, 10.0, False),
            call=codec.encode([[Slot(0)], {"size": 512}]),
        ),
        spec("report", "render", "load", name="report"),
    ]
    step_changes = changes.pop("step", None)
    if step_changes is not None:
        steps[1] = dataclasses.replace(steps[1], **step_changes)
    kwargs: dict[str, Any] = {
        "result_keys": ("report",),
        "result": codec.encode({"report": Slot(0)}),
        "params": codec.encode({"url": "x"}),
    }
    kwargs.update(changes)
    return build(kwargs.pop("pipeline", "room"), steps, **kwargs)


def test_bytes_round_trip_preserves_the_plan_and_its_digest() -> None:
    plan = rich_plan()
    again = Plan.from_bytes(plan.to_bytes())
    assert again == plan
    assert again.digest == plan.digest
    assert again.index == plan.index
    assert again.to_bytes() == plan.to_bytes()


def test_a_built_plan_is_encoded_once_and_its_bytes_are_its_digests() -> None:
    plan = rich_plan()
    fresh = codec.encode(plan.to_wire())
    assert plan.to_bytes() == fresh
    assert plan.to_bytes() is plan.to_bytes()  # kept from build, not encoded again
    assert hashlib.sha256(plan.to_bytes()).hexdigest() == plan.digest


def test_a_plan_read_back_keeps_no_encoding_and_encodes_the_same() -> None:
    plan = Plan.from_bytes(rich_plan().to_bytes())
    assert plan.encoded == b""
    assert plan.to_bytes() == rich_plan().to_bytes()


def test_an_expanded_plan_encodes_its_expansion() -> None:
    plan = build("p", [spec("items"), spec("each", "items", map_over="items")])
    expanded = plan.expand(plan.index["each"], 2)
    assert expanded.to_bytes() == codec.encode(expanded.to_wire())
    assert expanded.to_bytes() != plan.to_bytes()
    assert expanded.digest == plan.digest


def test_round_trip_of_a_reordered_plan_preserves_the_digest() -> None:
    plan = build("p", [spec("c", "b"), spec("b", "a"), spec("a")], result_keys=("c",))
    assert Plan.from_bytes(plan.to_bytes()).digest == plan.digest


def test_digest_is_deterministic() -> None:
    assert rich_plan().digest == rich_plan().digest
    assert len(rich_plan().digest) == 64


def test_digest_ignores_int_versus_float_durations() -> None:
    one = build("p", [spec("a", timeout=5, retry=RetryPolicy(2, 1, 60))])
    other = build("p", [spec("a", timeout=5.0, retry=RetryPolicy(2, 1.0, 60.0))])
    assert one.digest == other.digest
    assert Plan.from_bytes(one.to_bytes()).digest == one.digest


@pytest.mark.parametrize(
    "changes",
    [
        {"pipeline": "other"},
        {"result_keys": ("render",)},
        {"result": codec.encode(None)},
        {"params": codec.encode({"url": "y"})},
        {"step": {"key": "draw"}},
        {"step": {"name": "draw"}},
        {"step": {"queue": "cpu"}},
        {"step": {"priority": 7}},
        {"step": {"retry": RetryPolicy(3, 0.5, 10.0, True)}},
        {"step": {"retry": RetryPolicy(4, 0.5, 10.0, False)}},
        {"step": {"timeout": 1.0}},
        {"step": {"deps": ()}},
        {"step": {"call": codec.encode([[Slot(0)], {"size": 256}])}},
    ],
    ids=repr,
)
def test_digest_changes_when_anything_changes(changes: dict[str, Any]) -> None:
    if changes.get("step", {}).get("key") == "draw":
        # Renaming a key must also rename the references to it.
        plan = build(
            "room",
            [
                spec("load", name="load", queue="io", priority=2, timeout=30.0),
                spec("draw", "load", name="render", queue="gpu", priority=8,
                     retry=RetryPolicy(3, 0.5, 10.0, False),
                     call=codec.encode([[Slot(0)], {"size": 512}])),
                spec("report", "draw", "load", name="report"),
            ],
            result_keys=("report",),
            result=codec.encode({"report": Slot(0)}),
            params=codec.encode({"url": "x"}),
        )  # fmt: skip
    else:
        plan = rich_plan(**changes)
    assert plan.digest != rich_plan().digest


def wire_plan(**fields: Any) -> bytes:
    """An encoded one-step plan; ``fields`` replace parts of its wire form."""
    step: dict[str, Any] = {
        "key": "a",
        "name": "n",
        "queue": "q",
        "priority": 0,
        "retry": [0, 1.0, 60.0, True],
        "timeout": None,
        "deps": [],
        "call": EMPTY_CALL,
    }
    plan: dict[str, Any] = {
        "version": 1,
        "pipeline": "p",
        "steps": None,
        "result_keys": [],
        "result": NULL_RESULT,
        "params": codec.encode({}),
    }
    for name, value in fields.items():
        (plan if name in plan else step)[name] = value
    if plan["steps"] is None:
        plan["steps"] = [list(step.values())]
    return msgpack.packb(list(plan.values()), use_bin_type=True)


def test_wire_plan_helper_builds_a_valid_plan() -> None:
    assert keys(Plan.from_bytes(wire_plan())) == ["a"]


MALFORMED = {
    "empty": b"",
    "not msgpack": b"\xc1",
    "truncated": wire_plan()[:-3],
    "a string": codec.encode("a string"),
    "an int": codec.encode(42),
    "empty list": codec.encode([]),
    "too short": codec.encode([1, "p", [], [], NULL_RESULT]),
    "unknown extension": msgpack.packb([1, "p", [], [], msgpack.ExtType(99, b""), b""]),
    "version": wire_plan(version=2),
    "pipeline name": wire_plan(pipeline=""),
    "steps not a list": wire_plan(steps=5),
    "step too short": wire_plan(steps=[["a"]]),
    "step of wrong types": wire_plan(steps=[[1, 2, 3, 4, 5, 6, 7, 8]]),
    "retry not a list": wire_plan(retry="retry"),
    "retry jitter not a bool": wire_plan(retry=[0, 1.0, 60.0, 1]),
    "retry backoff not a number": wire_plan(retry=[0, "1", 60.0, True]),
    "priority": wire_plan(priority=11),
    "timeout": wire_plan(timeout="soon"),
    "deps not keys": wire_plan(deps=[["x"]]),
    "deps unknown": wire_plan(deps=["ghost"]),
    "call not bytes": wire_plan(call="call"),
    "result keys not keys": wire_plan(result_keys=[["a"]]),
    "result keys unknown": wire_plan(result_keys=["ghost"]),
    "result not bytes": wire_plan(result=5),
    "params not bytes": wire_plan(params=5),
    "params missing": wire_plan(params=None),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_bytes_raise_plan_error(data: bytes) -> None:
    with pytest.raises(PlanError):
        Plan.from_bytes(data)


def test_a_plan_using_every_option_keeps_its_steps_and_its_pinned_digest() -> None:
    """The wire form feeds digests that stores keep: a plan built with every option set
    (made before build() took its specs positionally) must build the same, bit for bit."""
    specs = [
        StepSpec("items", "items", timeout=5),
        StepSpec("ok", "check", deps=("items",)),
        StepSpec(
            "each",
            "each",
            deps=("items", "ok"),
            when="ok",
            accept_missing=True,
            map_over="items",
            max_wait=60,
            map_key="id",
            kind="celery",
            task_options=(("b", 2), ("a", 1)),
            version="2",
            retry=RetryPolicy(3, 1, 30),
            limits=StepLimits(concurrency=2),
        ),
        StepSpec("end", "join", deps=("each",), call=codec.encode([[Slot(0)], {}])),
    ]
    plan = build("pinned", specs, result_keys=("end",))
    assert plan.digest == "2551796485e4199df632521f06d37e850fcb87b97ff90c223d69b546cf1c40a9"
    each = plan.steps[plan.index["each"]]
    assert (each.index, each.deps, each.dependents) == (2, (0, 1), (3,))
    assert (each.when, each.map_over, each.element, each.accept_missing) == (1, 0, None, True)
    assert (each.max_wait, each.map_key, each.kind, each.version) == (60.0, "id", "celery", "2")
    assert each.task_options == (("a", 1), ("b", 2))
    assert each.retry == RetryPolicy(3, 1, 30) and each.limits == StepLimits(concurrency=2)
    assert plan.steps[0].timeout == 5.0 and isinstance(plan.steps[0].timeout, float)
    assert plan.steps[0].dependents == (1, 2)
    assert Plan.from_bytes(plan.to_bytes()) == plan


def test_make_spec_builds_the_frozen_spec_the_constructor_builds() -> None:
    values = [f.default for f in dataclasses.fields(StepSpec)]
    values[:2] = ["k", "n"]
    values[6] = ("a", "b")
    made = make_spec(*values)
    assert made == StepSpec(*values)
    assert hash(made) == hash(StepSpec(*values))
    assert type(made) is StepSpec
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.key = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        make_spec("k", "n")  # every field, in order
