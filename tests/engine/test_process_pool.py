"""Sync steps in the process pool (``--pool process``, real child processes) when they are
cancelled or die: a step that ignores its cancellation is killed after the cancel grace
and its child replaced; one that stops by itself keeps its child; a child that dies fails
only its own attempt; steps in the pool's other children are never touched."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aexec import codec, pipeline
from aexec.coordinator import Coordinator
from aexec.errors import StepTimeoutError
from aexec.events import EventKind
from aexec.loader import load_file
from aexec.objects.memory import MemoryObjectStore
from aexec.pool import ChildDied, ProcessPool
from aexec.store.memory import MemoryStore
from aexec.testing import wait_for_event
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus, StepStatus
from aexec.worker import Worker, WorkerConfig

WAIT = 20.0  # bound on every wait for something that should happen (children spawn slowly)

STEPS = '''
import os
import time
from pathlib import Path

import aexec
from aexec import step


def _started(where: str, name: str) -> None:
    aexec.current().progress(0.0, "started")
    tmp = Path(where, name + ".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.rename(Path(where, name + ".pid"))


@step
def stubborn(where: str) -> None:
    """Ignores its cancellation."""
    _started(where, "stubborn")
    while True:
        time.sleep(0.02)


@step
def polite(where: str) -> str:
    """Stops once it is cancelled."""
    _started(where, "polite")
    while not aexec.current().cancelled:
        time.sleep(0.01)
    return "stopped"


@step
def steady(where: str) -> int:
    """Runs until the file ``release`` appears, then returns its pid."""
    _started(where, "steady")
    deadline = time.monotonic() + 30
    while not Path(where, "release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


@step
def crash(code: int) -> None:
    os._exit(code)


@step
def with_a_process_of_its_own() -> int:
    import multiprocessing

    process = multiprocessing.get_context("spawn").Process(target=os.getpid)
    process.start()
    process.join()
    return process.exitcode


@step(timeout=2.0)  # the child starts first
def overdue(where: str) -> None:
    _started(where, "overdue")
    while True:
        time.sleep(0.02)
'''


@pytest.fixture
def module(tmp_path: Path) -> Path:
    path = tmp_path / "pool_steps.py"
    path.write_text(STEPS)
    return path


def call(*args: Any) -> bytes:
    return codec.encode([list(args), {}])


def _poll(done: Any, what: str) -> None:
    """Wait for ``done()`` (a file or a process of another process: nothing to await)."""
    deadline = time.monotonic() + WAIT
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


async def pid_file(path: Path) -> int:
    """The pid a step wrote to ``path`` once it started."""
    await asyncio.to_thread(_poll, path.exists, f"{path.name} never appeared")
    return int(await asyncio.to_thread(path.read_text))


async def gone(pid: int) -> None:
    """Returns once process ``pid`` has exited and been reaped."""
    await asyncio.to_thread(_poll, lambda: not alive(pid), f"process {pid} still runs")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_step_that_ignores_its_cancellation_is_killed_and_its_child_replaced(
    module: Path, tmp_path: Path
) -> None:
    pool = ProcessPool([str(module)], 2, cancel_grace=0.5)
    try:
        stubborn = asyncio.create_task(pool.run("stubborn", call(str(tmp_path)), [], "r", "a", 1))
        sibling = asyncio.create_task(pool.run("steady", call(str(tmp_path)), [], "r", "b", 1))
        victim = await pid_file(tmp_path / "stubborn.pid")
        neighbour = await pid_file(tmp_path / "steady.pid")
        stubborn.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(stubborn, WAIT)
        await gone(victim)
        assert not sibling.done() and alive(neighbour)  # the other child is untouched
        (tmp_path / "release").touch()
        blob, error = await asyncio.wait_for(sibling, WAIT)
        assert error is None and blob is not None and codec.decode(blob) == neighbour
        pids = pool.pids
        assert len(pids) == 2 and victim not in pids and neighbour in pids  # its size kept
        # The replacement serves the next step.
        blob, error = await asyncio.wait_for(
            pool.run("steady", call(str(tmp_path)), [], "r", "c", 1), WAIT
        )
        assert error is None and blob is not None
    finally:
        pool.shutdown()


async def test_a_step_that_stops_when_cancelled_keeps_its_child(
    module: Path, tmp_path: Path
) -> None:
    pool = ProcessPool([str(module)], 1, cancel_grace=60.0)  # a kill would time the test out
    try:
        polite = asyncio.create_task(pool.run("polite", call(str(tmp_path)), [], "r", "a", 1))
        child = await pid_file(tmp_path / "polite.pid")
        polite.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(polite, WAIT)
        assert pool.pids == [child]
        (tmp_path / "release").touch()
        blob, error = await asyncio.wait_for(
            pool.run("steady", call(str(tmp_path)), [], "r", "b", 1), WAIT
        )
        assert error is None and blob is not None and codec.decode(blob) == child
    finally:
        pool.shutdown()


async def test_a_child_that_dies_fails_only_its_own_attempt_and_is_replaced(
    module: Path, tmp_path: Path
) -> None:
    pool = ProcessPool([str(module)], 2)
    try:
        sibling = asyncio.create_task(pool.run("steady", call(str(tmp_path)), [], "r", "b", 1))
        neighbour = await pid_file(tmp_path / "steady.pid")
        with pytest.raises(ChildDied, match=r"child process \d+ died \(exit status 3\)"):
            await asyncio.wait_for(pool.run("crash", call(3), [], "r", "a", 1), WAIT)
        (tmp_path / "release").touch()
        blob, error = await asyncio.wait_for(sibling, WAIT)
        assert error is None and blob is not None and codec.decode(blob) == neighbour
        assert len(pool.pids) == 2 and neighbour in pool.pids
    finally:
        pool.shutdown()


async def test_shutting_the_pool_down_stops_every_child_even_a_busy_one(
    module: Path, tmp_path: Path
) -> None:
    pool = ProcessPool([str(module)], 2)
    busy = asyncio.create_task(pool.run("stubborn", call(str(tmp_path)), [], "r", "a", 1))
    victim = await pid_file(tmp_path / "stubborn.pid")
    (tmp_path / "release").touch()
    await asyncio.wait_for(pool.run("steady", call(str(tmp_path)), [], "r", "b", 1), WAIT)
    idle = int((tmp_path / "steady.pid").read_text())
    pool.shutdown()
    with pytest.raises(ChildDied):
        await asyncio.wait_for(busy, WAIT)
    await gone(victim)
    await gone(idle)


# -- through a worker and its coordinator ----------------------------------------------------


@pytest.fixture
async def transport() -> AsyncIterator[MemoryTransport]:
    t = MemoryTransport()
    await t.open()
    yield t
    await t.close()


async def test_cancelling_a_run_kills_its_stubborn_step_stops_its_polite_one_and_spares_others(
    module: Path, tmp_path: Path, transport: MemoryTransport, store: MemoryStore
) -> None:
    loaded = load_file(module)
    doomed_dir, other_dir = tmp_path / "doomed", tmp_path / "other"
    doomed_dir.mkdir()
    other_dir.mkdir()

    @pipeline
    def doomed(where: str) -> object:
        return [loaded.stubborn(where), loaded.polite(where)]

    @pipeline
    def other(where: str) -> object:
        return loaded.steady(where)

    cancelled, spared = doomed.compile(where=str(doomed_dir)), other.compile(where=str(other_dir))
    config = WorkerConfig(
        pool="process",
        process_pool_size=3,
        modules=(str(module),),
        cancel_grace=0.5,
        heartbeat_interval=0.05,
    )
    steps = cancelled.steps | spared.steps
    async with (
        Coordinator(transport, store) as coordinator,
        Worker(transport, MemoryObjectStore(), steps, config) as worker,
    ):
        await worker.serve("default")
        sibling = await coordinator.submit(spared.plan)
        run = await coordinator.submit(cancelled.plan)
        stubborn = await pid_file(doomed_dir / "stubborn.pid")
        polite = await pid_file(doomed_dir / "polite.pid")
        neighbour = await pid_file(other_dir / "steady.pid")
        await coordinator.cancel(run.run_id, "enough")
        assert await asyncio.wait_for(run.done, WAIT) is RunStatus.CANCELLED
        await gone(stubborn)  # killed after the grace
        assert alive(polite) and alive(neighbour)  # stopped by itself; not touched
        assert not sibling.done.done()
        (other_dir / "release").touch()
        assert await asyncio.wait_for(sibling.done, WAIT) is RunStatus.SUCCEEDED
        assert alive(polite)
    statuses = {s.key: s.status for s in await store.get_steps(run.run_id)}
    assert statuses == {"stubborn": StepStatus.CANCELLED, "polite": StepStatus.CANCELLED}
    record = await store.get_run(sibling.run_id)
    assert record is not None and record.result is not None
    assert codec.decode(record.result) == neighbour
    for pid in (polite, neighbour):  # the worker's pool went with it
        await gone(pid)


async def test_a_sync_step_past_its_timeout_is_killed_after_the_grace_and_fails(
    module: Path, tmp_path: Path, transport: MemoryTransport, store: MemoryStore
) -> None:
    loaded = load_file(module)

    @pipeline
    def late(where: str) -> object:
        return loaded.overdue(where)

    compiled = late.compile(where=str(tmp_path))
    config = WorkerConfig(
        pool="process", process_pool_size=1, modules=(str(module),), cancel_grace=0.2
    )
    async with (
        Coordinator(transport, store) as coordinator,
        Worker(transport, MemoryObjectStore(), compiled.steps, config) as worker,
    ):
        await worker.serve("default")
        run = await coordinator.submit(compiled.plan)
        assert await asyncio.wait_for(run.done, WAIT) is RunStatus.FAILED
    (record,) = await store.get_steps(run.run_id)
    assert record.status is StepStatus.FAILED
    assert record.error is not None and record.error.type == StepTimeoutError.__name__
    await gone(int((tmp_path / "overdue.pid").read_text()))


async def test_a_worker_stopping_while_it_waits_to_kill_a_cancelled_step_kills_it_at_once(
    module: Path, tmp_path: Path, transport: MemoryTransport, store: MemoryStore
) -> None:
    loaded = load_file(module)

    @pipeline
    def doomed(where: str) -> object:
        return loaded.stubborn(where)

    compiled = doomed.compile(where=str(tmp_path))
    config = WorkerConfig(
        pool="process", process_pool_size=1, modules=(str(module),), cancel_grace=60.0
    )
    async with Coordinator(transport, store) as coordinator:
        async with Worker(transport, MemoryObjectStore(), compiled.steps, config) as worker:
            await worker.serve("default")
            run = await coordinator.submit(compiled.plan)
            victim = await pid_file(tmp_path / "stubborn.pid")
            async with asyncio.timeout(WAIT):
                await wait_for_event(coordinator.events(run.run_id), EventKind.STEP_PROGRESS)
            await coordinator.cancel(run.run_id)
            assert await asyncio.wait_for(run.done, WAIT) is RunStatus.CANCELLED
            # The worker stops (SIGTERM) with a short grace, well inside the step's 60 s.
            async with asyncio.timeout(WAIT):
                await worker.drain(grace=0.2)
        await gone(victim)


async def test_an_aborted_worker_kills_its_children_at_once(
    module: Path, tmp_path: Path, transport: MemoryTransport, store: MemoryStore
) -> None:
    loaded = load_file(module)

    @pipeline
    def doomed(where: str) -> object:
        return loaded.stubborn(where)

    compiled = doomed.compile(where=str(tmp_path))
    config = WorkerConfig(
        pool="process", process_pool_size=1, modules=(str(module),), cancel_grace=60.0
    )
    async with Coordinator(transport, store) as coordinator:
        worker = Worker(transport, MemoryObjectStore(), compiled.steps, config)
        async with worker:
            await worker.serve("default")
            await coordinator.submit(compiled.plan)
            victim = await pid_file(tmp_path / "stubborn.pid")
            async with asyncio.timeout(WAIT):  # as a crash would: not the 60 s grace
                await worker.abort()
        await gone(victim)


async def test_a_step_in_the_pool_may_start_processes_of_its_own(module: Path) -> None:
    pool = ProcessPool([str(module)], 1)
    try:
        blob, error = await asyncio.wait_for(
            pool.run("with_a_process_of_its_own", call(), [], "r", "a", 1), WAIT
        )
        assert error is None and blob is not None and codec.decode(blob) == 0
    finally:
        pool.shutdown()
