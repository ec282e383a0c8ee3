"""Run admission and run tags on the embedded executor (memory adapters)."""

from __future__ import annotations

import asyncio

import pytest

import aexec.testing
from aexec import pipeline, step
from aexec.errors import PlanError
from aexec.events import Event, EventKind
from aexec.run import Run
from aexec.types import RunStatus

gates: dict[str, asyncio.Event] = {}


@step
async def hold(name: str) -> str:
    await gates[name].wait()
    return name


@pipeline
def held(name: str) -> object:
    return hold(name)


async def wait_for(run: Run, kind: EventKind) -> Event:
    async with asyncio.timeout(10.0):  # a bound: a broken admission must fail, not hang
        return await aexec.testing.wait_for_event(run, kind)


def gate(name: str) -> str:
    gates[name] = asyncio.Event()
    return name


async def test_runs_past_max_concurrent_runs_wait_queued_and_start_as_others_end() -> None:
    async with aexec.testing.executor(max_concurrent_runs=2) as ex:
        first = await ex.submit(held, name=gate("first"))
        second = await ex.submit(held, name=gate("second"))
        third = await ex.submit(held, name=gate("third"), priority=1)
        queued = await wait_for(third, EventKind.RUN_QUEUED)
        assert queued.data == {"position": 1}
        assert (await ex.store.get_run(third.run_id)).status is RunStatus.PENDING  # type: ignore[union-attr]
        gates["first"].set()
        assert await first.result() == "first"
        await wait_for(third, EventKind.RUN_STARTED)
        gates["second"].set()
        gates["third"].set()
        assert [await second.result(), await third.result()] == ["second", "third"]


async def test_queued_runs_start_by_priority() -> None:
    async with aexec.testing.executor(max_concurrent_runs=1) as ex:
        busy = await ex.submit(held, name=gate("busy"))
        low = await ex.submit(held, name=gate("low"), priority=0)
        high = await ex.submit(held, name=gate("high"), priority=9)
        await wait_for(high, EventKind.RUN_QUEUED)
        gates["busy"].set()
        await busy.result()
        await wait_for(high, EventKind.RUN_STARTED)
        record = await ex.store.get_run(low.run_id)
        assert record is not None and record.status is RunStatus.PENDING
        gates["high"].set()
        gates["low"].set()
        assert await low.result() == "low"


async def test_a_tag_limit_queues_runs_of_that_tag_only() -> None:
    async with aexec.testing.executor(run_limits={"tenant": 1}) as ex:
        a1 = await ex.submit(held, name=gate("a1"), tags={"tenant": "a"})
        a2 = await ex.submit(held, name=gate("a2"), tags={"tenant": "a"})
        b1 = await ex.submit(held, name=gate("b1"), tags={"tenant": "b"})
        await wait_for(a2, EventKind.RUN_QUEUED)
        gates["b1"].set()
        assert await b1.result() == "b1"  # not behind tenant a's queue
        gates["a2"].set()
        gates["a1"].set()
        assert [await a1.result(), await a2.result()] == ["a1", "a2"]
        record = await ex.store.get_run(a1.run_id)
        assert record is not None and record.tags == {"tenant": "a"}


async def test_cancelling_a_queued_run_ends_it_without_starting_it() -> None:
    async with aexec.testing.executor(max_concurrent_runs=1) as ex:
        busy = await ex.submit(held, name=gate("busy2"))
        waiting = await ex.submit(held, name=gate("never"))
        await wait_for(waiting, EventKind.RUN_QUEUED)
        await waiting.cancel()
        assert (await waiting.wait()).status is RunStatus.CANCELLED
        kinds = [e.kind async for e in waiting.events()]
        assert EventKind.RUN_STARTED not in kinds
        gates["busy2"].set()
        assert await busy.result() == "busy2"


async def test_bad_tags_are_refused_before_anything_is_recorded() -> None:
    async with aexec.testing.executor() as ex:
        with pytest.raises(PlanError, match="tag key 'a=b'"):
            await ex.submit(held, name=gate("x"), tags={"a=b": "c"})
        with pytest.raises(PlanError, match="must have a text value"):
            await ex.submit(held, name=gate("x"), tags={"n": 1})  # type: ignore[dict-item]
        assert await ex.list_runs() == []
