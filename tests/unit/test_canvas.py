"""aexec.canvas compiles Celery-style workflows to ordinary plans, with Celery's shape."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from aexec import codec, pipeline, step
from aexec.canvas import Signature, chain, chord, group, wire
from aexec.canvas import pipeline as canvas_pipeline
from aexec.errors import DefinitionError
from aexec.plan import Plan

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@step
def noop(*args: object, **kwargs: object) -> bool:
    return True


@step
def tag(*args: object) -> str:
    return "-".join(map(str, args))


def deps(plan: Plan) -> dict[str, list[str]]:
    return {s.key: [plan.steps[d].key for d in s.deps] for s in plan.steps}


def call(plan: Plan, key: str) -> list[object]:
    """A step's call template, its inputs shown as the keys they come from."""
    spec = plan.step(key)
    keys = [plan.steps[d].key for d in spec.deps]
    return codec.decode(spec.call, inputs=[f"<{k}>" for k in keys])  # type: ignore[no-any-return]


def compiled(workflow: object) -> Plan:
    return canvas_pipeline(workflow, name="w").compile().plan  # type: ignore[arg-type]


def test_a_chain_passes_each_result_as_the_next_first_argument() -> None:
    plan = compiled(chain(tag.s(1), tag.s(2), tag.s(3)))
    assert deps(plan) == {"tag": [], "tag_2": ["tag"], "tag_3": ["tag_2"]}
    assert call(plan, "tag") == [[1], {}]
    assert call(plan, "tag_2") == [["<tag>", 2], {}]
    assert call(plan, "tag_3") == [["<tag_2>", 3], {}]


def test_an_immutable_signature_runs_after_but_takes_no_result() -> None:
    plan = compiled(tag.s(1) | tag.si(2) | tag.s(3))
    assert deps(plan) == {"tag": [], "tag_2": ["tag"], "tag_3": ["tag_2"]}
    assert call(plan, "tag_2") == [[2], {}]
    assert call(plan, "tag_3") == [["<tag_2>", 3], {}]


def test_a_chord_body_takes_the_list_of_the_header_results() -> None:
    plan = compiled(tag.s(0) | chord([tag.s(i) for i in range(3)], tag.s("body")))
    assert deps(plan)["tag_5"] == ["tag_2", "tag_3", "tag_4"]
    assert call(plan, "tag_2") == [["<tag>", 0], {}]
    assert call(plan, "tag_5") == [[["<tag_2>", "<tag_3>", "<tag_4>"], "body"], {}]
    assert chord([tag.s(1)])(tag.s()).body is not None  # chord(header)(body), as Celery


def test_a_group_followed_by_a_task_is_a_chord_and_nested_groups_flatten() -> None:
    plan = compiled(group(group(tag.s(1), tag.s(2)), tag.s(3) | tag.s(4)) | tag.si("end"))
    assert deps(plan)["tag_5"] == ["tag", "tag_2", "tag_4"]
    assert call(plan, "tag_5") == [["end"], {}]


def test_the_57_step_chain_of_chords_of_the_ovh_article() -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import ovh_canvas
    finally:
        sys.path.remove(str(EXAMPLES))
    plan = ovh_canvas.chain_of_chords.compile().plan
    assert len(plan) == 57
    shape = deps(plan)
    assert shape["noop"] == []
    for c in range(5):  # chord c: 10 tasks after the previous result, then their body
        first = 2 + c * 11
        header = [f"noop_{first + i}" for i in range(10)]
        before = "noop" if c == 0 else f"noop_{first - 1}"
        assert all(shape[k] == [before] for k in header)
        assert shape[f"noop_{first + 10}"] == header
    assert shape["noop_57"] == ["noop_56"]

    nested = deps(ovh_canvas.nested_graph.compile().plan)
    assert len(nested) == 23
    assert [k for k, d in nested.items() if not d] == [
        *(f"noop{'' if i == 1 else f'_{i}'}" for i in range(1, 7)),
        "noop_18",
    ]
    assert nested["noop_11"] == ["noop", "noop_2", "noop_3", "noop_4", "noop_5", "noop_10"]
    assert all(nested[f"noop_{i}"] == ["noop_11"] for i in range(12, 17))
    assert nested["noop_17"] == [f"noop_{i}" for i in range(12, 17)]
    assert nested["noop_22"] == ["noop_21"]
    assert nested["noop_23"] == ["noop_17", "noop_22"]


def test_a_thousand_chord_chain_built_with_the_pipe_operator_compiles() -> None:
    workflow: object = noop.s(0)
    for _ in range(1000):  # as deep as it is long: no recursion
        workflow = workflow | chord([noop.s(i) for i in range(10)], noop.s())  # type: ignore[operator]
    assert len(compiled(workflow | noop.s())) == 11_002  # type: ignore[operator]


def test_wire_mixes_a_workflow_with_ordinary_steps_in_a_pipeline_body() -> None:
    @pipeline
    def mixed() -> object:
        results = wire(group(tag.s(1), tag.s(2)))
        return tag.alias("after")(*results)

    plan = mixed.compile().plan
    assert deps(plan)["after"] == ["tag", "tag_2"]
    assert plan.result_deps == (plan.index["after"],)


def test_a_signature_alias_sets_its_key() -> None:
    assert deps(compiled(tag.s(1).alias("first") | tag.s(2))) == {"first": [], "tag": ["first"]}


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: chain(tag.s(1), 42), "chain takes signatures"),
        (lambda: group([tag]), "group takes signatures"),
        (lambda: chord([tag.s()], tag), "a chord's body is a signature"),
        (lambda: Signature(print), "a signature needs a step"),  # type: ignore[arg-type]
        (lambda: wire(tag.s()), "only inside a @pipeline body"),
        (lambda: canvas_pipeline(tag, name="x"), "not a workflow"),  # type: ignore[arg-type]
    ],
)
def test_misuse_is_a_definition_error_naming_the_mistake(build: object, fragment: str) -> None:
    with pytest.raises(DefinitionError, match=fragment):
        build()  # type: ignore[operator]


def test_bad_arguments_to_a_signature_are_caught_at_compile_time() -> None:
    @step
    def one(x: int) -> int:
        return x

    with pytest.raises(DefinitionError, match="called with bad arguments"):
        compiled(one.s(1) | one.s(2))
