"""Rerun, and rerun from failure, on the embedded executor (memory adapters)."""

from __future__ import annotations

from collections import Counter

import pytest

import aexec.testing
from aexec import pipeline, step
from aexec.errors import ParameterError, RunFailedError
from aexec.events import EventKind
from aexec.types import RunStatus, StepStatus

calls: Counter[str] = Counter()
broken: set[str] = set()


@step
async def load(n: int) -> int:
    calls["load"] += 1
    return n


@step
async def transform(x: int) -> int:
    calls["transform"] += 1
    if "transform" in broken:
        raise RuntimeError("transform is broken")
    return x * 10


@step
async def publish(x: int) -> int:
    calls["publish"] += 1
    return x + 1


@step
async def side(n: int) -> int:
    calls["side"] += 1
    return -n


@pipeline
def etl(n: int = 4) -> object:
    return [publish(transform(load(n))), side(n)]


@pytest.fixture(autouse=True)
def fresh() -> None:
    calls.clear()
    broken.clear()


async def test_rerun_from_failure_reuses_succeeded_outputs_and_runs_the_rest() -> None:
    async with aexec.testing.executor() as ex:
        broken.add("transform")
        first = await ex.submit(etl)
        with pytest.raises(RunFailedError):
            await first.result()
        assert calls == Counter({"load": 1, "transform": 1, "side": 1})
        broken.clear()
        second = await ex.rerun(first.run_id, from_failure=True, pipeline=etl)
        assert await second.result() == [41, -4]
        # load and side were not run again; transform and publish ran once each.
        assert calls == Counter({"load": 1, "transform": 2, "side": 1, "publish": 1})
        record = await ex.get_run(second.run_id)
        assert record is not None and record.parent == first.run_id
        steps = {s.key: s for s in await ex.get_steps(second.run_id)}
        assert {k: (s.status, s.attempts) for k, s in steps.items()} == {
            "load": (StepStatus.SUCCEEDED, 0),
            "side": (StepStatus.SUCCEEDED, 0),
            "transform": (StepStatus.SUCCEEDED, 1),
            "publish": (StepStatus.SUCCEEDED, 1),
        }
        reused = [e async for e in second.events() if e.data.get("reused_from")]
        assert sorted(e.step for e in reused if e.step) == ["load", "side"]
        assert all(e.kind is EventKind.STEP_SUCCEEDED for e in reused)


async def test_a_plain_rerun_runs_every_step_again() -> None:
    async with aexec.testing.executor() as ex:
        first = await ex.submit(etl)
        assert await first.result() == [41, -4]
        again = await ex.rerun(first.run_id, pipeline=etl)
        assert await again.result() == [41, -4]
        assert calls == Counter({"load": 2, "transform": 2, "publish": 2, "side": 2})


async def test_new_parameters_rerun_the_steps_they_change_and_reuse_the_others() -> None:
    @step
    async def fixed() -> int:
        calls["fixed"] += 1
        return 1

    @step
    async def scaled(base: int, factor: int) -> int:
        calls["scaled"] += 1
        return base * factor

    @pipeline
    def scaling(factor: int = 2) -> object:
        return scaled(fixed(), factor)

    async with aexec.testing.executor() as ex:
        first = await ex.submit(scaling)
        assert await first.result() == 2
        second = await ex.rerun(first.run_id, from_failure=True, pipeline=scaling, factor=5)
        assert await second.result() == 5
        assert calls == Counter({"fixed": 1, "scaled": 2})
        assert (await ex.get_run(second.run_id)).params == {"factor": 5}  # type: ignore[union-attr]


async def test_a_rerun_takes_a_new_priority() -> None:
    async with aexec.testing.executor() as ex:
        broken.add("transform")
        first = await ex.submit(etl)
        with pytest.raises(RunFailedError):
            await first.result()
        broken.clear()
        second = await ex.rerun(first.run_id, from_failure=True, pipeline=etl, priority=7)
        assert await second.result() == [41, -4]
        record = await ex.get_run(second.run_id)
        assert record is not None and record.priority == 7


async def test_rerun_refusals_are_clear() -> None:
    async with aexec.testing.executor() as ex:
        with pytest.raises(ParameterError, match="no run 'nope' to rerun"):
            await ex.rerun("nope")
        first = await ex.submit(etl)
        await first.result()
        with pytest.raises(ParameterError, match="needs the pipeline's code"):
            await ex.rerun(first.run_id, n=3)
        with pytest.raises(ParameterError, match="embedded mode needs the pipeline's code"):
            await ex.rerun(first.run_id)

        @pipeline
        def other() -> None:
            side(1)

        with pytest.raises(ParameterError, match="ran pipeline 'etl', not 'other'"):
            await ex.rerun(first.run_id, pipeline=other)
        assert (await ex.get_run(first.run_id)).status is RunStatus.SUCCEEDED  # type: ignore[union-attr]
