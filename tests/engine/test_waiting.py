"""Why steps wait, as ``runs show`` tells it (:mod:`aexec.waiting`), on live runs."""

from __future__ import annotations

import asyncio

import aexec.testing
from aexec import pipeline, step
from aexec.events import EventKind
from aexec.executor import Executor
from aexec.limits import StepLimits, describe
from aexec.waiting import waiting_for

release = asyncio.Event()


@step(concurrency=1)
async def single(i: int) -> int:
    await release.wait()
    return i


@step(rate_limit="1/h")
async def rare(i: int) -> int:
    return i


@step
async def after(values: list[int]) -> int:
    return sum(values)


@pipeline
def limited() -> object:
    return after(
        [single.alias("s1")(1), single.alias("s2")(2), rare.alias("r1")(1), rare.alias("r2")(2)]
    )


async def reasons(ex: Executor, run_id: str) -> dict[str, str]:
    record = await ex.get_run(run_id)
    assert record is not None
    plan = await ex.store.get_plan(record.plan_digest)
    return waiting_for(record, await ex.get_steps(run_id), plan)


def test_limits_read_as_what_a_step_waits_for() -> None:
    assert describe("render", StepLimits(concurrency=2)) == "concurrency limit render (2)"
    keyed = StepLimits(concurrency=1, uses=("gpu",), key_name="tenant")
    assert describe("bill", keyed, "acme") == "concurrency limit bill[acme] (1) or limit gpu"


async def test_each_waiting_step_says_what_it_waits_for() -> None:
    release.clear()
    async with aexec.testing.executor(max_concurrent_runs=1) as ex:
        run = await ex.submit(limited)
        async with asyncio.timeout(10.0):
            await aexec.testing.wait_for_event(run, EventKind.STEP_STARTED, step="s1")
            await aexec.testing.wait_for_event(run, EventKind.STEP_SUCCEEDED, step="r1")
        queued = await ex.submit(limited)
        async with asyncio.timeout(10.0):
            await aexec.testing.wait_for_event(queued, EventKind.RUN_QUEUED)
        # r1 took the one token of the hour: r2 waits for the next.
        assert await reasons(ex, run.run_id) == {
            "s2": "concurrency limit single (1)",
            "r2": "rate limit rare (1/h)",
            "after": "inputs: s1, s2, r2",
        }
        assert set((await reasons(ex, queued.run_id)).values()) == {"admission"}
        await run.cancel()
        await queued.cancel()
        await run.wait()
        assert await reasons(ex, run.run_id) == {}  # a finished run waits for nothing
