"""The loop CPU tally of the benchmarks names the task that spent the time, and puts the
loop back as it was."""

from __future__ import annotations

import asyncio
import asyncio.events
import time

from benchmarks import loopcpu


async def burner() -> None:
    for _ in range(5):
        end = time.thread_time() + 0.01
        while time.thread_time() < end:
            pass
        await asyncio.sleep(0)


async def idler() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def both() -> None:
    await asyncio.gather(burner(), idler())


def test_the_cpu_of_a_task_is_counted_under_its_coroutine() -> None:
    original = asyncio.events.Handle._run
    with loopcpu.handle_cpu() as tally:
        asyncio.run(both())
    assert asyncio.events.Handle._run is original
    (name, seconds, runs), *_ = tally.top(3)
    assert name == "task:burner"
    assert seconds >= 0.05 and runs >= 5
    idle = tally.by_name["task:idler"]
    assert idle[0] < 0.01 and idle[1] >= 5
    assert tally.total() >= seconds


def test_nothing_is_counted_after_the_with() -> None:
    with loopcpu.handle_cpu() as tally:
        pass
    asyncio.run(both())
    assert tally.by_name == {}
