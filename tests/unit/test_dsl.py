"""The definition API: steps, pipelines, handles, and the plans they compile to."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from aexec import codec
from aexec.dsl import CompiledPipeline, Output, Pipeline, StepDef, pipeline, remote_step, step
from aexec.errors import DefinitionError, ParameterError, PlanError
from aexec.plan import DEFAULT_QUEUE, Plan, PlanStep
from aexec.retry import RetryPolicy

HERE = __file__
UNENCODABLE = object()


def here() -> int:
    """The caller's current line number."""
    return sys._getframe(1).f_lineno


@step
def source() -> int:
    return 1


@step
def add(a: int, b: int = 0) -> int:
    return a + b


@step
def total(values: Any) -> Any:
    return values


@step
def gather(*values: Any, **named: Any) -> Any:
    return values, named


@step(queue="gpu", priority=8, retries=3, retry_backoff=0.5, retry_backoff_max=5.0, timeout=60)
async def render(scene: bytes, size: int = 512) -> bytes:
    return scene * size


reconstruct = remote_step("reconstruct", queue="repo-reconstruct", retries=2, timeout=10.0)


def compile_(p: Pipeline, **params: Any) -> Plan:
    return p.compile(**params).plan


def call_of(plan: Plan, key: str, inputs: list[Any]) -> Any:
    """The step's ``[args, kwargs]`` with ``inputs`` substituted for its slots."""
    return codec.decode(plan.step(key).call, inputs=inputs)


def dep_keys(plan: Plan, key: str) -> list[str]:
    return [plan.steps[d].key for d in plan.step(key).deps]


def result_of(plan: Plan, inputs: list[Any]) -> Any:
    return codec.decode(plan.result, inputs=inputs)


# -- step definitions ------------------------------------------------------------------


def test_bare_step_takes_its_function_name_and_defaults() -> None:
    assert isinstance(add, StepDef)
    assert add.name == "add"
    assert add.queue == DEFAULT_QUEUE
    assert add.priority == 0
    assert add.retry == RetryPolicy()
    assert add.timeout is None
    assert not add.is_remote
    assert add.__wrapped__ is not None


def test_step_options_are_recorded() -> None:
    assert render.name == "render"
    assert render.queue == "gpu"
    assert render.priority == 8
    assert render.retry == RetryPolicy(3, 0.5, 5.0, True)
    assert render.timeout == 60.0
    assert isinstance(render.timeout, float)


def test_step_name_option_overrides_the_function_name() -> None:
    @step(name="custom")
    def fn() -> None: ...

    assert fn.name == "custom"


def test_step_retry_jitter_option() -> None:
    @step(retries=1, retry_jitter=False)
    def fn() -> None: ...

    assert fn.retry.jitter is False


def test_sync_and_async_functions_are_told_apart() -> None:
    assert add.is_async is False
    assert render.is_async is True


def test_step_keeps_the_docstring() -> None:
    @step
    def documented() -> None:
        """Does things."""

    assert documented.__doc__ == "Does things."


def test_calling_a_step_outside_a_pipeline_calls_its_function() -> None:
    assert add(2, b=3) == 5
    assert asyncio.run(render(b"ab", size=2)) == b"abab"


def test_step_repr() -> None:
    assert repr(add) == "<step 'add' queue='default'>"
    assert repr(reconstruct) == "<remote_step 'reconstruct' queue='repo-reconstruct'>"


@pytest.mark.parametrize(
    "options",
    [
        {"name": ""},
        {"queue": ""},
        {"priority": 11},
        {"priority": -1},
        {"priority": True},
        {"retries": -1},
        {"retries": 1.5},
        {"retry_backoff": -1.0},
        {"retry_backoff_max": -1.0},
        {"retry_backoff_max": "long"},
        {"retry_jitter": "yes"},
        {"timeout": 0},
        {"timeout": -5.0},
        {"timeout": float("nan")},
        {"timeout": "10"},
    ],
    ids=repr,
)
def test_bad_step_options_raise_definition_error_at_the_decorator(options: dict[str, Any]) -> None:
    line = here() + 3
    with pytest.raises(DefinitionError) as info:

        @step(**options)
        def fn() -> None: ...

    assert f"{HERE}:{line}: step " in str(info.value)


def test_step_decorator_refuses_a_non_callable() -> None:
    with pytest.raises(DefinitionError, match="expects a function"):
        step()(42)  # type: ignore[arg-type]


# -- remote steps ----------------------------------------------------------------------


def test_remote_step_has_no_code_and_keeps_its_options() -> None:
    assert reconstruct.is_remote
    assert reconstruct.fn is None
    assert reconstruct.is_async is False
    assert reconstruct.name == "reconstruct"
    assert reconstruct.queue == "repo-reconstruct"
    assert reconstruct.retry.retries == 2
    assert reconstruct.timeout == 10.0


def test_calling_a_remote_step_outside_a_pipeline_is_a_definition_error() -> None:
    line = here() + 2
    with pytest.raises(DefinitionError, match="only be called inside a @pipeline") as info:
        reconstruct(url="x")
    assert f"{HERE}:{line}" in str(info.value)


def test_remote_step_options_are_validated() -> None:
    with pytest.raises(DefinitionError, match="priority"):
        remote_step("x", priority=99)
    with pytest.raises(DefinitionError, match="name"):
        remote_step("")


def test_remote_step_takes_any_arguments_in_a_pipeline() -> None:
    @pipeline
    def p() -> Any:
        return reconstruct("a", 1, url="u", anything=[1, 2])

    plan = compile_(p)
    assert call_of(plan, "reconstruct", []) == [["a", 1], {"url": "u", "anything": [1, 2]}]
    assert plan.step("reconstruct").queue == "repo-reconstruct"
    assert plan.step("reconstruct").timeout == 10.0


def test_the_same_remote_step_declared_twice_may_be_used_together() -> None:
    again = remote_step("reconstruct", queue="repo-reconstruct")

    @pipeline
    def p() -> None:
        reconstruct()
        again()

    assert [s.key for s in compile_(p).steps] == ["reconstruct", "reconstruct_2"]


def test_remote_steps_with_one_name_may_run_on_two_queues() -> None:
    elsewhere = remote_step("reconstruct", queue="other")

    @pipeline
    def p() -> None:
        reconstruct()
        elsewhere()

    plan = compile_(p)
    assert [(s.key, s.name, s.queue) for s in plan.steps] == [
        ("reconstruct", "reconstruct", "repo-reconstruct"),
        ("reconstruct_2", "reconstruct", "other"),
    ]


# -- keys and aliases ------------------------------------------------------------------


def test_repeated_calls_get_keys_name_name_2_name_3() -> None:
    @pipeline
    def p() -> None:
        for _ in range(3):
            source()

    assert [s.key for s in compile_(p).steps] == ["source", "source_2", "source_3"]


def test_alias_sets_the_key_and_keeps_the_name() -> None:
    @pipeline
    def p() -> None:
        for i in range(3):
            source.alias(f"s{i}")()

    plan = compile_(p)
    assert [s.key for s in plan.steps] == ["s0", "s1", "s2"]
    assert {s.name for s in plan.steps} == {"source"}


def test_default_keys_skip_keys_already_taken_by_aliases() -> None:
    @pipeline
    def p() -> None:
        source.alias("source_2")()
        source()
        source()
        source.alias("source")  # aliasing alone adds nothing
        source()

    assert [s.key for s in compile_(p).steps] == ["source_2", "source", "source_3", "source_4"]


def test_default_key_after_an_alias_equal_to_the_name() -> None:
    @pipeline
    def p() -> None:
        source.alias("source")()
        source()

    assert [s.key for s in compile_(p).steps] == ["source", "source_2"]


def test_duplicate_alias_names_this_file_and_line() -> None:
    lines: list[int] = []

    @pipeline
    def p() -> None:
        source.alias("dup")()
        lines.append(here() + 1)
        source.alias("dup")()

    with pytest.raises(DefinitionError, match="duplicate step key 'dup'") as info:
        p.compile()
    assert f"{HERE}:{lines[0]}:" in str(info.value)


def test_alias_colliding_with_a_default_key_is_a_definition_error() -> None:
    @pipeline
    def p() -> None:
        source()
        source.alias("source")()

    with pytest.raises(DefinitionError, match="duplicate step key 'source'"):
        p.compile()


@pytest.mark.parametrize("key", ["", None, 3])
def test_alias_must_be_a_non_empty_string(key: Any) -> None:
    with pytest.raises(DefinitionError, match="alias"):
        source.alias(key)


def test_calling_an_alias_outside_a_pipeline_is_a_definition_error() -> None:
    with pytest.raises(DefinitionError, match="only be called inside a @pipeline"):
        add.alias("x")(1, 2)


# -- edges and call templates ----------------------------------------------------------


def test_handle_passed_positionally() -> None:
    @pipeline
    def p() -> None:
        a = source()
        add(a, 5)

    plan = compile_(p)
    assert dep_keys(plan, "add") == ["source"]
    assert call_of(plan, "add", ["IN"]) == [["IN", 5], {}]


def test_handle_passed_by_keyword() -> None:
    @pipeline
    def p() -> None:
        a = source()
        add(1, b=a)

    plan = compile_(p)
    assert dep_keys(plan, "add") == ["source"]
    assert call_of(plan, "add", ["IN"]) == [[1], {"b": "IN"}]


def test_handles_passed_through_star_args() -> None:
    @pipeline
    def p() -> None:
        handles = [source.alias(f"s{i}")() for i in range(3)]
        gather(*handles, extra=handles[0])

    plan = compile_(p)
    assert dep_keys(plan, "gather") == ["s0", "s1", "s2"]
    assert call_of(plan, "gather", ["A", "B", "C"]) == [["A", "B", "C"], {"extra": "A"}]


def test_fan_in_through_a_list() -> None:
    @pipeline
    def p() -> None:
        total([add.alias(f"a{i}")(i, i) for i in range(100)])

    plan = compile_(p)
    assert dep_keys(plan, "total") == [f"a{i}" for i in range(100)]
    assert call_of(plan, "total", list(range(100))) == [[list(range(100))], {}]
    assert call_of(plan, "a7", []) == [[7, 7], {}]
    assert plan.step("total").index == 100


def test_fan_in_through_a_tuple_and_a_dict() -> None:
    @pipeline
    def p() -> None:
        x, y = source.alias("x")(), source.alias("y")()
        total({"pair": (x, y), "nested": {"again": [y, 3]}, "const": "c"})

    plan = compile_(p)
    assert dep_keys(plan, "total") == ["x", "y"]
    assert call_of(plan, "total", ["X", "Y"]) == [
        [{"pair": ["X", "Y"], "nested": {"again": ["Y", 3]}, "const": "c"}],
        {},
    ]


def test_the_same_handle_twice_is_one_dependency() -> None:
    @pipeline
    def p() -> None:
        a = source()
        add(a, b=a)

    plan = compile_(p)
    assert dep_keys(plan, "add") == ["source"]
    assert call_of(plan, "add", ["IN"]) == [["IN"], {"b": "IN"}]


def test_constants_are_encoded_into_the_call_template() -> None:
    import datetime as dt

    @pipeline
    def p() -> None:
        total({"when": dt.date(2024, 1, 2), "tags": {"a"}, "blob": b"\x00"})

    assert call_of(compile_(p), "total", []) == [
        [{"when": dt.date(2024, 1, 2), "tags": {"a"}, "blob": b"\x00"}],
        {},
    ]


def test_a_step_without_arguments_has_the_empty_call() -> None:
    @pipeline
    def p() -> None:
        source()

    assert call_of(compile_(p), "source", []) == [[], {}]


def test_step_options_reach_the_plan() -> None:
    @pipeline
    def p() -> None:
        render(b"scene")

    s = compile_(p).step("render")
    assert (s.name, s.queue, s.priority, s.timeout) == ("render", "gpu", 8, 60.0)
    assert s.retry == RetryPolicy(3, 0.5, 5.0, True)


def test_steps_are_ordered_by_dependency() -> None:
    @pipeline
    def p() -> None:
        a = source()
        b = add.alias("b")(a)
        add.alias("c")(a, b)

    plan = compile_(p)
    by_key: dict[str, PlanStep] = {s.key: s for s in plan.steps}
    assert by_key["c"].deps == (by_key["source"].index, by_key["b"].index)
    assert by_key["source"].dependents == (by_key["b"].index, by_key["c"].index)


# -- pipeline results ------------------------------------------------------------------


def test_pipeline_without_a_result() -> None:
    @pipeline
    def p() -> None:
        source()

    plan = compile_(p)
    assert plan.result_deps == ()
    assert result_of(plan, []) is None


def test_pipeline_result_is_a_handle() -> None:
    @pipeline
    def p() -> Any:
        source()
        return add(1)

    plan = compile_(p)
    assert [plan.steps[d].key for d in plan.result_deps] == ["add"]
    assert result_of(plan, [42]) == 42


def test_pipeline_result_is_a_list_of_handles() -> None:
    @pipeline
    def p() -> Any:
        return [add.alias(f"r{i}")(i) for i in range(3)]

    plan = compile_(p)
    assert [plan.steps[d].key for d in plan.result_deps] == ["r0", "r1", "r2"]
    assert result_of(plan, ["a", "b", "c"]) == ["a", "b", "c"]


def test_pipeline_result_is_a_dict_of_handles_and_constants() -> None:
    @pipeline
    def p() -> Any:
        a = source()
        return {"value": a, "again": [a], "label": "fixed"}

    plan = compile_(p)
    assert [plan.steps[d].key for d in plan.result_deps] == ["source"]
    assert result_of(plan, [9]) == {"value": 9, "again": [9], "label": "fixed"}


def test_unencodable_pipeline_result_is_a_definition_error() -> None:
    @pipeline
    def p() -> Any:
        return object()

    with pytest.raises(DefinitionError, match="result of pipeline 'p' cannot be encoded"):
        p.compile()


# -- parameters ------------------------------------------------------------------------


def test_parameters_are_bound_with_defaults_and_recorded_in_the_plan() -> None:
    seen: list[Any] = []

    @pipeline
    def p(url: str, size: int = 512, scale: float = 1.0) -> None:
        seen.append((url, size, scale))
        render(url.encode(), size=size)

    plan = compile_(p, url="http://x", scale=2)
    assert seen == [("http://x", 512, 2.0)]
    assert isinstance(seen[0][2], float)
    assert plan.parameters == {"url": "http://x", "size": 512, "scale": 2.0}
    assert call_of(plan, "render", []) == [[b"http://x"], {"size": 512}]


def test_pipeline_parameters_are_described() -> None:
    @pipeline
    def p(url: str, size: int = 512) -> None: ...

    assert [(q.name, q.required) for q in p.parameters] == [("url", True), ("size", False)]
    assert p.parameters[0].annotation is str
    assert p.parameters[1].default == 512


def test_unknown_parameter_is_a_parameter_error() -> None:
    @pipeline
    def p(url: str) -> None: ...

    with pytest.raises(ParameterError, match=r"unknown parameter 'urll'.*parameters: url"):
        p.compile(url="x", urll="y")


def test_missing_parameter_is_a_parameter_error() -> None:
    @pipeline
    def p(url: str) -> None: ...

    with pytest.raises(ParameterError, match="missing parameter 'url'"):
        p.compile()


def test_parameter_error_is_a_plan_error() -> None:
    assert issubclass(ParameterError, PlanError)


@pytest.mark.parametrize(
    ("annotation", "value", "ok"),
    [
        ("int", 3, True),
        ("int", True, False),
        ("int", "3", False),
        ("int", 3.0, False),
        ("float", 3, True),
        ("float", 3.5, True),
        ("float", True, False),
        ("float", "3.5", False),
        ("str", "x", True),
        ("str", 3, False),
        ("bool", True, True),
        ("bool", 1, False),
        ("list", [1], True),
        ("list", "ab", False),
        ("dict", {"a": 1}, True),
        ("dict", [], False),
        ("bytes", b"x", True),
        ("bytes", "x", False),
    ],
    ids=repr,
)
def test_parameter_types_are_checked(annotation: str, value: Any, ok: bool) -> None:
    namespace: dict[str, Any] = {}
    exec(f"def body(x: {annotation}) -> None: ...", namespace)
    p = pipeline(name="typed")(namespace["body"])
    if ok:
        assert p.bind({"x": value}) == {"x": value}
        assert type(p.bind({"x": value})["x"]) is (float if annotation == "float" else type(value))
    else:
        with pytest.raises(ParameterError, match=f"expects {annotation}"):
            p.bind({"x": value})


def test_unannotated_and_other_parameters_are_not_type_checked() -> None:
    @pipeline
    def p(a, b: Any, c: int | None = None) -> None:  # type: ignore[no-untyped-def]
        ...

    assert p.bind({"a": "x", "b": 1, "c": "not checked"}) == {"a": "x", "b": 1, "c": "not checked"}


def test_unencodable_parameter_value_is_a_parameter_error() -> None:
    @pipeline
    def p(x: Any) -> None: ...

    with pytest.raises(ParameterError, match="cannot be encoded"):
        p.compile(x=object())


def test_unencodable_parameter_default_is_a_definition_error() -> None:
    with pytest.raises(DefinitionError, match="default of parameter 'x'") as info:

        @pipeline
        def p(x: Any = UNENCODABLE) -> None: ...

    assert f"{HERE}:" in str(info.value)


def test_star_parameters_are_a_definition_error() -> None:
    with pytest.raises(DefinitionError, match=r"\*args or \*\*kwargs"):

        @pipeline
        def p(*values: Any) -> None: ...


# -- definition errors inside a body -----------------------------------------------------


def test_unencodable_constant_names_file_line_and_argument() -> None:
    lines: list[int] = []

    @pipeline
    def p() -> None:
        lines.append(here() + 1)
        add(1, b=object())

    with pytest.raises(DefinitionError) as info:
        p.compile()
    message = str(info.value)
    assert f"{HERE}:{lines[0]}:" in message
    assert "argument 'b' of step 'add' cannot be encoded" in message
    assert "object" in message


def test_unencodable_positional_constant_is_numbered() -> None:
    @pipeline
    def p() -> None:
        a = source()
        total([a, {"bad": object()}])

    with pytest.raises(DefinitionError, match="argument 1 of step 'total' cannot be encoded"):
        p.compile()


def test_handle_from_another_pipeline_is_a_definition_error() -> None:
    leaked: list[Output] = []

    @pipeline
    def first() -> None:
        leaked.append(source())

    @pipeline
    def second() -> None:
        add(leaked[0])

    first.compile()
    with pytest.raises(DefinitionError, match="belongs to another pipeline"):
        second.compile()


def test_handle_from_another_pipeline_as_a_result_is_a_definition_error() -> None:
    leaked: list[Output] = []

    @pipeline
    def first() -> None:
        leaked.append(source())

    @pipeline
    def second() -> Any:
        return leaked[0]

    first.compile()
    with pytest.raises(DefinitionError, match="belongs to another pipeline"):
        second.compile()


def test_handle_passed_to_a_step_outside_a_pipeline_is_a_definition_error() -> None:
    leaked: list[Output] = []

    @pipeline
    def p() -> None:
        leaked.append(source())

    p.compile()
    with pytest.raises(DefinitionError, match="outside its pipeline"):
        add([leaked[0]])


def test_handle_used_as_a_bool_is_a_definition_error() -> None:
    lines: list[int] = []

    @pipeline
    def p() -> None:
        a = source()
        lines.append(here() + 1)
        if a:
            add(1)

    with pytest.raises(DefinitionError, match="testing its truth") as info:
        p.compile()
    assert f"{HERE}:{lines[0]}:" in str(info.value)


def test_iterating_over_a_handle_is_a_definition_error() -> None:
    @pipeline
    def p() -> None:
        for _ in source():
            pass

    with pytest.raises(DefinitionError, match="iterating over it"):
        p.compile()


def test_unpacking_a_handle_is_a_definition_error() -> None:
    @pipeline
    def p() -> None:
        _a, _b = source()

    with pytest.raises(DefinitionError, match="iterating over it"):
        p.compile()


def test_indexing_a_handle_is_a_definition_error() -> None:
    @pipeline
    def p() -> None:
        add(source()[0])

    with pytest.raises(DefinitionError, match="indexing it"):
        p.compile()


def test_handle_repr_names_its_step() -> None:
    seen: list[str] = []

    @pipeline
    def p() -> None:
        seen.append(repr(source.alias("s")()))

    p.compile()
    assert seen == ["<output of step 's'>"]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), ((1, 2, 3), {}), ((1,), {"c": 2}), ((1,), {"a": 2})],
    ids=["missing", "too-many", "unknown-keyword", "twice"],
)
def test_calling_a_step_with_wrong_arguments_is_a_definition_error(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    lines: list[int] = []

    @pipeline
    def p() -> None:
        lines.append(here() + 1)
        add(*args, **kwargs)

    with pytest.raises(DefinitionError, match="step 'add' called with bad arguments") as info:
        p.compile()
    assert f"{HERE}:{lines[0]}:" in str(info.value)


def test_a_step_called_well_many_times_is_still_checked_when_called_badly() -> None:
    @pipeline
    def p() -> None:
        for i in range(3):
            add.alias(f"good{i}")(i, i)
            add.alias(f"kw{i}")(i, b=i)
        add.alias("bad")(1, 2, 3)

    with pytest.raises(DefinitionError, match="step 'add' called with bad arguments"):
        p.compile()


def test_two_functions_with_one_step_name_in_one_pipeline_are_a_definition_error() -> None:
    @step(name="add")
    def other_add(a: int) -> int:
        return a

    @pipeline
    def p() -> None:
        add(1)
        other_add(2)

    with pytest.raises(DefinitionError, match="two different steps are named 'add'") as info:
        p.compile()
    assert "name= option" in str(info.value)


def test_one_function_decorated_twice_may_be_used_together() -> None:
    def fn() -> None: ...

    first, second = step(fn), step(queue="other")(fn)

    @pipeline
    def p() -> None:
        first()
        second()

    compiled = p.compile()
    assert [(s.key, s.queue) for s in compiled.plan.steps] == [("fn", "default"), ("fn_2", "other")]
    assert compiled.steps["fn"].fn is fn


def test_an_error_raised_by_a_body_is_a_definition_error_naming_its_line() -> None:
    lines: list[int] = []

    @pipeline
    def p() -> None:
        lines.append(here() + 1)
        raise ValueError("user bug")

    with pytest.raises(DefinitionError) as info:
        p.compile()
    assert f"{HERE}:{lines[0]}:" in str(info.value)
    assert "pipeline 'p' raised while compiling: ValueError: user bug" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)


def test_an_error_raised_in_a_helper_names_the_helper_line() -> None:
    lines: list[int] = []

    def helper() -> None:
        lines.append(here() + 1)
        raise KeyError("missing")

    @pipeline
    def p() -> None:
        helper()

    with pytest.raises(DefinitionError, match="KeyError") as info:
        p.compile()
    assert f"{HERE}:{lines[0]}:" in str(info.value)


def test_a_failed_compile_leaves_no_pipeline_active() -> None:
    @pipeline
    def p() -> None:
        source()
        raise ValueError("boom")

    with pytest.raises(DefinitionError):
        p.compile()
    assert add(1, 2) == 3  # outside a pipeline again: calls the function


# -- pipelines -------------------------------------------------------------------------


def test_pipeline_name_and_name_option() -> None:
    @pipeline
    def room() -> None: ...

    @pipeline(name="custom")
    def other() -> None: ...

    assert room.name == "room"
    assert other.name == "custom"
    assert compile_(other).pipeline == "custom"
    assert repr(room) == "<pipeline 'room'>"


def test_empty_pipeline_compiles_to_an_empty_plan() -> None:
    @pipeline
    def p() -> None: ...

    assert len(compile_(p)) == 0


def test_nested_pipeline_call_inlines_its_steps_under_a_key_prefix() -> None:
    @pipeline
    def inner(x: Any) -> Any:
        return add(x, b=1)

    @pipeline
    def outer() -> Any:
        a = source()
        b = inner(a)
        c = inner(b)
        return inner.alias("last")(c)

    plan = compile_(outer)
    assert [s.key for s in plan.steps] == ["source", "inner.add", "inner_2.add", "last.add"]
    assert dep_keys(plan, "inner.add") == ["source"]
    assert dep_keys(plan, "inner_2.add") == ["inner.add"]
    assert [plan.steps[d].key for d in plan.result_deps] == ["last.add"]


def test_sub_pipelines_nest_their_prefixes_and_check_their_arguments() -> None:
    @pipeline
    def leaf(x: Any) -> Any:
        return add(x, b=1)

    @pipeline
    def middle(x: Any) -> Any:
        return leaf(leaf(x))

    @pipeline
    def outer() -> Any:
        return middle(source())

    plan = compile_(outer)
    assert [s.key for s in plan.steps] == ["source", "middle.leaf.add", "middle.leaf_2.add"]

    @pipeline
    def wrong() -> Any:
        return leaf(1, 2)

    with pytest.raises(DefinitionError, match="pipeline 'leaf' called with bad arguments"):
        compile_(wrong)

    @pipeline
    def twice() -> Any:
        leaf.alias("x")(1)
        return leaf.alias("x")(2)

    with pytest.raises(DefinitionError, match="duplicate sub-pipeline key 'x'"):
        compile_(twice)


def test_calling_a_pipeline_outside_a_pipeline_is_a_definition_error() -> None:
    @pipeline
    def p() -> None: ...

    with pytest.raises(DefinitionError, match="not called directly"):
        p()


def test_compiled_pipeline_maps_step_names_to_definitions() -> None:
    @pipeline
    def p() -> None:
        a = source()
        add.alias("one")(a)
        add.alias("two")(a)
        reconstruct(url="u")

    compiled = p.compile()
    assert isinstance(compiled, CompiledPipeline)
    assert compiled.steps == {"source": source, "add": add, "reconstruct": reconstruct}


def test_compiling_twice_gives_the_same_plan() -> None:
    @pipeline
    def p(n: int = 3) -> Any:
        return total([add.alias(f"a{i}")(i) for i in range(n)])

    assert compile_(p).digest == compile_(p).digest
    assert compile_(p).digest != compile_(p, n=4).digest


def test_a_body_runs_once_per_compile() -> None:
    runs: list[int] = []

    @pipeline
    def p() -> None:
        runs.append(1)
        source()

    p.compile()
    assert runs == [1]
