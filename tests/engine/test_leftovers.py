"""A coordinator keeps nothing of the runs that ended: its memory follows the runs in
flight, not the runs it has driven (issue 15, flat memory).

The check walks every object the coordinator reaches (its maps, queues, timers, caps,
feeds, ...) and looks for the run ids of runs that ended.  The ports it was given (store,
transport, object store) and the embedded worker are left out: they are not the
coordinator's bookkeeping, and the store keeps every run by design.
"""

from __future__ import annotations

import asyncio
import collections
import sys
from typing import Any

import pytest

import aexec
import aexec.testing
from aexec import pipeline, step
from aexec.coordinator import Coordinator
from aexec.executor import Executor
from aexec.heap import Trimmer, releaser
from aexec.objects.memory import MemoryObjectStore
from aexec.store.memory import MemoryStore
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus
from aexec.worker import Worker

NOT_BOOKKEEPING = (
    MemoryStore,
    MemoryTransport,
    MemoryObjectStore,
    Worker,
    asyncio.AbstractEventLoop,
    type(sys),  # modules
    type,
)

SCALARS = (int, float, bytes, bool, type(None))


def holders_of(root: object, ids: set[str]) -> collections.Counter[str]:
    """Where (attribute paths from ``root``) any of ``ids`` is still reachable."""
    found: collections.Counter[str] = collections.Counter()
    seen: set[int] = set()
    pending: list[tuple[object, str]] = [(root, "coordinator")]
    while pending:
        obj, path = pending.pop()
        if id(obj) in seen or isinstance(obj, SCALARS + NOT_BOOKKEEPING):
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            if obj in ids:
                found[path] += 1
            continue
        if isinstance(obj, dict):
            for key, value in obj.items():
                pending += [(key, f"{path}{{}}"), (value, f"{path}[]")]
        elif isinstance(obj, list | tuple | set | frozenset | collections.deque):
            pending += [(value, f"{path}[]") for value in obj]
        else:
            pending += [(value, f"{path}.{name}") for name, value in _fields(obj)]
    return found


def _fields(obj: object) -> list[tuple[str, Any]]:
    fields = list(getattr(obj, "__dict__", {}).items())
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if name != "__dict__" and hasattr(obj, name):
                fields.append((name, getattr(obj, name)))
    if isinstance(obj, asyncio.Future):  # what a pending future or task holds on to
        fields += [("callbacks", obj._callbacks)]  # type: ignore[attr-defined]
    return fields


@step
async def noop(*args: object) -> bool:
    return True


@step
async def join(results: list[bool]) -> bool:
    return all(results)


@step(retries=1, retry_backoff=0.01, retry_jitter=False)
async def flaky() -> int:
    if aexec.current().attempt == 1:
        raise RuntimeError("first attempt fails")
    return 1


@step
async def broken() -> int:
    raise ValueError("always fails")


@step(concurrency=2, rate_limit="1000/s")
async def capped(x: object) -> bool:
    return True


@step
async def forever() -> None:
    await asyncio.Event().wait()


@pipeline
def chord(width: int = 5) -> object:
    start = noop.alias("start")()
    return join([capped.alias(f"p{i}")(start) for i in range(width)])


@pipeline
def retried() -> object:
    return noop(flaky())


@pipeline
def failing() -> object:
    return noop(broken())  # noop is skipped


@pipeline
def endless() -> object:
    return noop(forever())


@pipeline
def parent() -> object:
    return noop(chord(width=2, run_as_child=True))  # a child run


def _coordinator(ex: Executor) -> Coordinator:
    coordinator = ex.coordinator
    assert coordinator is not None
    return coordinator


async def test_the_coordinator_keeps_nothing_of_runs_that_ended() -> None:
    async with aexec.testing.executor(heartbeat_interval=0.05) as ex:
        runs = []
        for _ in range(10):
            runs += [
                await ex.submit(chord),
                await ex.submit(retried),
                await ex.submit(failing),
                await ex.submit(parent),
            ]
        cancelled = [await ex.submit(endless) for _ in range(5)]
        await asyncio.sleep(0.05)
        for run in cancelled:
            await run.cancel("test")
        statuses: collections.Counter[RunStatus] = collections.Counter()
        for run in runs + cancelled:
            statuses[(await run.wait()).status] += 1
        assert statuses == {
            RunStatus.SUCCEEDED: 30,
            RunStatus.FAILED: 10,
            RunStatus.CANCELLED: 5,
        }
        coordinator = _coordinator(ex)
        ended = {run.run_id for run in runs + cancelled}
        ended |= {r.run_id for r in await coordinator.store.list_runs(limit=1000)}
        assert len(ended) == 55  # the 45 runs and the 10 child runs
        await asyncio.sleep(0.1)  # what trails the ends (announcements, timers) is done
        assert coordinator.runs == {}
        assert holders_of(coordinator, ended) == {}


async def test_the_check_finds_runs_in_flight() -> None:
    """The walk does reach the coordinator's bookkeeping: runs in flight are found."""
    async with aexec.testing.executor(heartbeat_interval=0.05) as ex:
        runs = [await ex.submit(endless) for _ in range(3)]
        coordinator = _coordinator(ex)
        await asyncio.sleep(0.05)
        found = holders_of(coordinator, {run.run_id for run in runs})
        assert found.total() >= 3
        for run in runs:
            await run.cancel()
            await run.wait()


async def test_an_idle_coordinator_returns_freed_memory_to_the_system() -> None:
    async with aexec.testing.executor(heartbeat_interval=0.05) as ex:
        runs = [await ex.submit(chord) for _ in range(20)]
        for run in runs:
            assert await run.result() is True
        heap = _coordinator(ex).heap
        await asyncio.wait_for(heap.trimmed.wait(), 5)
        assert heap.trims == 1  # the runs ended together: one trim, not one per run
        assert heap.seconds < 0.5


@pytest.mark.skipif(releaser() is None, reason="no malloc_trim in this C library")
def test_malloc_trim_is_found_on_glibc() -> None:
    release = releaser()
    assert release is not None
    release()  # returns 1 if memory was released, 0 if not: either is fine


def test_no_malloc_trim_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert releaser() is None


async def test_trims_are_rate_limited_and_wait_for_idle_or_many_ends() -> None:
    calls: list[float] = []
    loop = asyncio.get_running_loop()
    trimmer = Trimmer(lambda: calls.append(loop.time()), interval=0.3, quiet=0.01, runs_per_trim=5)
    async with asyncio.TaskGroup() as group:
        task = group.create_task(trimmer.run())
        trimmer.ended(3, in_flight=2)  # neither idle nor many: no trim
        await asyncio.sleep(0.1)
        assert calls == []
        trimmer.ended(2, in_flight=2)  # 5 ended: a trim
        await asyncio.sleep(0.1)
        assert len(calls) == 1
        trimmer.ended(1, in_flight=0)  # idle, but within the interval: later
        await asyncio.sleep(0.05)
        assert len(calls) == 1
        await asyncio.sleep(0.3)
        assert len(calls) == 2
        assert calls[1] - calls[0] >= 0.3
        assert trimmer.trims == 2
        task.cancel()


async def test_without_malloc_trim_the_trimmer_does_nothing() -> None:
    trimmer = Trimmer(None, interval=0.0)
    trimmer.ended(10, in_flight=0)
    trimmer.trim()
    await asyncio.wait_for(trimmer.run(), 1)  # returns at once
    assert trimmer.trims == 0
