"""Canvas workflows run with Celery's semantics: results flow, chords collect, failures stop."""

from __future__ import annotations

from aexec import step
from aexec.canvas import chain, chord, group
from aexec.canvas import pipeline as canvas_pipeline
from aexec.errors import RunFailed
from aexec.executor import Executor
from aexec.types import StepStatus


@step
async def add(x: int, y: int) -> int:
    return x + y


@step
async def total(values: list[int], extra: int = 0) -> int:
    return sum(values) + extra


@step
async def boom(*args: object) -> int:
    raise ValueError("boom")


@step
async def constant(value: int) -> int:
    return value


async def test_a_chain_of_chords_computes_as_celery_would(ex: Executor) -> None:
    # ((1 + 1) fans out as (2 + i) for i < 3, summed: 9) + 10 = 19
    workflow = chain(
        add.s(1, 1),
        chord([add.s(i) for i in range(3)], total.s()),
        add.s(10),
    )
    run = await ex.submit(canvas_pipeline(workflow, name="chords"))
    assert await run.result() == 19


async def test_a_group_result_is_the_list_of_its_members_results(ex: Executor) -> None:
    workflow = constant.s(5) | group(add.s(1), add.s(2) | add.s(3), group(add.s(4), add.s(5)))
    run = await ex.submit(canvas_pipeline(workflow, name="g"))
    assert await run.result() == [6, 10, 9, 10]


async def test_immutable_signatures_ignore_the_previous_result(ex: Executor) -> None:
    workflow = constant.s(5) | constant.si(7) | add.s(1)
    run = await ex.submit(canvas_pipeline(workflow, name="si"))
    assert await run.result() == 8


async def test_a_failed_task_stops_the_chain_and_fails_the_run(ex: Executor) -> None:
    workflow = group(constant.s(1) | boom.s() | add.s(1), constant.s(2) | add.s(2))
    run = await ex.submit(canvas_pipeline(workflow, name="stops"))
    try:
        await run.result()
    except RunFailed as exc:
        assert "boom" in str(exc)
    else:
        raise AssertionError("the run should have failed")
    steps = {s.key: s.status for s in await ex.get_steps(run.run_id)}
    assert steps["boom"] is StepStatus.FAILED
    assert steps["add"] is StepStatus.SKIPPED  # after the failure: never ran
    assert steps["add_2"] is StepStatus.SUCCEEDED  # another branch: finished
