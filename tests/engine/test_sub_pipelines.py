"""Sub-pipelines run inlined under their key prefix, with their own steps' semantics."""

from __future__ import annotations

from aexec import pipeline, step
from aexec.errors import RunFailed
from aexec.executor import Executor
from aexec.types import StepStatus


@step
async def inc(x: int) -> int:
    return x + 1


@step
async def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"{x} is bad")
    return x


@pipeline
def twice(x: int, bad: int = -1) -> object:
    return fail_on(inc(inc(x)), bad)


@pipeline
def outer(bad: int = -1) -> object:
    first = twice(0, bad)
    return twice.alias("again")(first, bad)


async def test_a_sub_pipeline_runs_under_its_prefix_and_passes_its_result_on(
    ex: Executor,
) -> None:
    run = await ex.submit(outer)
    assert await run.result() == 4
    steps = {s.key: s.status for s in await ex.get_steps(run.run_id)}
    assert steps == {
        "twice.inc": StepStatus.SUCCEEDED,
        "twice.inc_2": StepStatus.SUCCEEDED,
        "twice.fail_on": StepStatus.SUCCEEDED,
        "again.inc": StepStatus.SUCCEEDED,
        "again.inc_2": StepStatus.SUCCEEDED,
        "again.fail_on": StepStatus.SUCCEEDED,
    }


async def test_a_failure_inside_a_sub_pipeline_skips_what_follows_it(ex: Executor) -> None:
    run = await ex.submit(outer, bad=2)
    try:
        await run.result()
    except RunFailed as exc:
        assert "twice.fail_on" in str(exc)
    else:
        raise AssertionError("the run should have failed")
    steps = {s.key: s.status for s in await ex.get_steps(run.run_id)}
    assert steps["twice.fail_on"] is StepStatus.FAILED
    assert steps["again.inc"] is StepStatus.SKIPPED
