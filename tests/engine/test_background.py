"""The task group that owns a component's tasks, and the one task that serves its timers."""

from __future__ import annotations

import asyncio
import random

import pytest

from aexec.background import Background, Timers
from aexec.errors import AexecError


async def forever(started: asyncio.Event | None = None) -> None:
    if started is not None:
        started.set()
    await asyncio.get_running_loop().create_future()


async def test_closing_the_group_cancels_its_loops_and_work_and_waits_for_them() -> None:
    cleaned: list[str] = []

    async def owned(name: str, started: asyncio.Event) -> None:
        try:
            await forever(started)
        finally:
            await asyncio.sleep(0)  # a clean-up that awaits still runs to its end
            cleaned.append(name)

    background = Background("test")
    async with background:
        loop_started, work_started = asyncio.Event(), asyncio.Event()
        loop = background.start_loop(owned("loop", loop_started), name="loop")
        work = background.start_work(owned("work", work_started))
        await loop_started.wait()
        await work_started.wait()
    assert loop.cancelled() and work.cancelled()
    assert sorted(cleaned) == ["loop", "work"]
    assert not background.running
    with pytest.raises(AexecError, match="not running"):
        background.start_work(forever())


async def test_drain_waits_for_work_started_meanwhile_while_loops_keep_running() -> None:
    finished: list[str] = []
    release = asyncio.Event()

    async def second() -> None:
        await release.wait()
        finished.append("second")

    async def first() -> None:
        background.start_work(second())  # more work, started while draining
        finished.append("first")

    async with Background("test") as background:
        loop = background.start_loop(forever(), name="loop")
        background.start_work(first())
        drained = asyncio.ensure_future(background.drain())
        await asyncio.sleep(0)
        assert not drained.done()
        release.set()
        await drained
        assert finished == ["first", "second"]
        assert not loop.done()


async def test_cancelling_the_work_leaves_the_loops_running_and_drain_waits_for_it() -> None:
    cleaned: list[str] = []

    async def work(started: asyncio.Event) -> None:
        try:
            await forever(started)
        finally:
            await asyncio.sleep(0)  # a clean-up that awaits still runs to its end
            cleaned.append("work")

    async with Background("test") as background:
        loop = background.start_loop(forever(), name="loop")
        started = asyncio.Event()
        task = background.start_work(work(started))
        await started.wait()
        background.cancel_work()
        await background.drain()
        assert task.cancelled() and cleaned == ["work"]
        assert not loop.done()
        assert background.running


async def test_a_failing_task_stops_its_siblings_and_is_raised_when_the_group_closes() -> None:
    failures: list[Exception] = []

    async def on_failure(failure: Exception) -> None:
        failures.append(failure)

    async def bug() -> None:
        raise RuntimeError("a bug")

    background = Background("test", on_failure=on_failure)
    await background.__aenter__()
    sibling_started = asyncio.Event()
    sibling = background.start_loop(forever(sibling_started), name="sibling")
    await sibling_started.wait()
    background.start_work(bug())
    await asyncio.wait([sibling])
    assert sibling.cancelled()
    assert not background.running
    (failure,) = failures
    assert isinstance(failure, ExceptionGroup)
    assert [str(e) for e in failure.exceptions] == ["a bug"]
    with pytest.raises(ExceptionGroup) as raised:
        await background.aclose()
    assert raised.value is failure
    await background.aclose()  # raised once; closing again does nothing


async def test_a_failure_never_cancels_the_task_that_opened_the_group() -> None:
    background = Background("test")
    opened, failed = asyncio.Event(), asyncio.Event()

    async def opener() -> str:
        await background.__aenter__()  # opened here, closed by another task below
        opened.set()
        await failed.wait()
        return "carried on"

    async def bug() -> None:
        raise RuntimeError("a bug")

    opening = asyncio.ensure_future(opener())
    await opened.wait()
    background.start_work(bug())
    with pytest.raises(ExceptionGroup):
        await background.aclose()
    failed.set()
    assert await opening == "carried on"


async def test_cancelling_whoever_closes_the_group_is_not_swallowed() -> None:
    background = Background("test")
    await background.__aenter__()
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await forever()
        finally:
            await release.wait()

    background.start_loop(slow_to_stop(), name="slow")
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(background.aclose())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert background.running is False
    release.set()
    await background.aclose()  # waits for what the cancelled close left running


async def test_timers_fire_in_the_order_they_fall_due_from_one_task() -> None:
    fired: list[str] = []
    done = asyncio.Event()

    def fire(item: str) -> None:
        fired.append(item)
        if len(fired) == 3:
            done.set()

    timers: Timers[str] = Timers(fire)
    async with Background("test") as background:
        background.start_loop(timers.run(), name="timers")
        timers.after(0.06, "late")
        timers.after(0.02, "early")  # earlier than the deadline the timer task sleeps towards
        timers.after(0.04, "middle")
        await done.wait()
    assert fired == ["early", "middle", "late"]
    assert len(timers) == 0


async def test_thousands_of_timers_share_one_task() -> None:
    fired: list[int] = []
    done = asyncio.Event()
    count = 2000
    rng = random.Random(7)

    def fire(item: int) -> None:
        fired.append(item)
        if len(fired) == count:
            done.set()

    timers: Timers[int] = Timers(fire)
    async with Background("test") as background:
        background.start_loop(timers.run(), name="timers")
        tasks_before = len(asyncio.all_tasks())
        delays = [rng.uniform(0.0, 0.05) for _ in range(count)]
        for item, delay in enumerate(delays):
            timers.after(delay, item)
        assert len(asyncio.all_tasks()) == tasks_before
        await done.wait()
    assert sorted(fired) == list(range(count))
