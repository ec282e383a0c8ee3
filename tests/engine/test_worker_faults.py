"""The worker under everyday faults (issue 8), on the in-memory adapters: completions nobody
can receive, runs that ended while their steps waited, graceful drains, a step's own
CancelledError, sync steps that must see their cancellation, and child processes that die
(``--pool process``, real child processes)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import aexec
from aexec import messages, pipeline, step
from aexec.coordinator import Coordinator
from aexec.errors import TransportError
from aexec.events import EventKind
from aexec.loader import load_file
from aexec.objects.memory import MemoryObjectStore
from aexec.scheduling import MAX_LOST
from aexec.store.memory import MemoryStore
from aexec.testing import wait_for_event
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus, StepStatus
from aexec.wire import step_queue
from aexec.worker import Worker, WorkerConfig

WAIT = 10.0  # bound on every wait for something that should happen
QUIET = 0.3  # how long to watch for something that should not happen
QUICK = {"heartbeat_interval": 0.05}


@pytest.fixture
async def transport() -> AsyncIterator[MemoryTransport]:
    t = MemoryTransport()
    await t.open()
    yield t
    await t.close()


class FailingReplies(MemoryTransport):
    """A broker that cannot take anything for the queue ``reply`` (as when it is away)."""

    async def publish(self, queue: str, body: bytes, *, priority: int = 0) -> None:
        if queue == "reply":
            raise TransportError("connection reset by peer")
        await super().publish(queue, body, priority=priority)


def step_message(run_id: str, name: str, reply_to: str, attempt: int = 1) -> bytes:
    """A step message calling step ``name`` with no arguments."""
    empty_call = b"\x92\x90\x80"  # [[], {}]
    return messages.StepMessage(
        run_id, name, attempt, name, empty_call, [], None, reply_to
    ).encode()


# -- a completion that cannot be delivered ----------------------------------------------------


async def test_a_completion_whose_reply_queue_is_gone_is_dropped_and_its_step_acked(
    transport: MemoryTransport, caplog: pytest.LogCaptureFixture
) -> None:
    ran = asyncio.Event()

    @step
    async def orphan() -> str:
        ran.set()
        return "nobody wants this"

    await transport.declare_queue(step_queue("default"))
    # The coordinator that dispatched it has exited: its reply queue is gone.
    await transport.publish(step_queue("default"), step_message("r1", "orphan", "reply.gone"))
    worker = Worker(transport, MemoryObjectStore(), {"orphan": orphan}, WorkerConfig(**QUICK))
    with caplog.at_level(logging.WARNING, logger="aexec.worker"):
        async with worker:
            await worker.serve("default")
            await asyncio.wait_for(ran.wait(), WAIT)
            # The worker gives the completion up at once: the drain does not wait for it.
            await asyncio.wait_for(worker.drain(), WAIT)
    assert transport.queue_depth(step_queue("default")) == 0  # acked, not handed back
    dropped = [r.getMessage() for r in caplog.records if "dropped the completion" in r.getMessage()]
    assert dropped == [
        f"worker {worker.name} dropped the completion of step orphan (attempt 1) of run r1: "
        "its coordinator's reply queue reply.gone is gone"
    ]


async def test_a_completion_the_broker_keeps_refusing_is_retried_until_the_drain_grace_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = FailingReplies()
    await transport.open()
    ran = asyncio.Event()

    @step
    async def unlucky() -> str:
        ran.set()
        return "done"

    await transport.declare_queue(step_queue("default"))
    await transport.declare_queue("reply")
    await transport.publish(step_queue("default"), step_message("r1", "unlucky", "reply"))
    config = WorkerConfig(drain_grace=0.3, lost_report_timeout=0.2, **QUICK)
    worker = Worker(transport, MemoryObjectStore(), {"unlucky": unlucky}, config)
    with caplog.at_level(logging.WARNING, logger="aexec.worker"):
        async with worker:
            await worker.serve("default")
            await asyncio.wait_for(ran.wait(), WAIT)
            await asyncio.wait_for(worker.drain(), WAIT)  # bounded by the grace
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) >= 2  # it did retry, with backoff, while the grace lasted
    # Neither the completion nor the report went out: the step message is back in its queue
    # (marked redelivered, so that the next worker reports it instead of running it).
    assert transport.queue_depth(step_queue("default")) == 1
    await transport.close()


# -- steps of runs that ended ----------------------------------------------------------------


def one_step(name: str, calls: list[str]) -> tuple[aexec.Pipeline, dict[str, aexec.StepDef]]:
    @step(name=name)
    async def record() -> str:
        calls.append(aexec.current().run_id)
        return "ran"

    @pipeline(name=f"{name}_pipeline")
    def p() -> object:
        return record()

    return p, {name: record}


async def test_queued_steps_of_a_cancelled_run_never_start_on_a_worker_that_starts_later(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    calls: list[str] = []
    p, steps = one_step("queued", calls)
    plan = p.compile().plan
    async with Coordinator(transport, store) as coordinator:
        cancelled = await coordinator.submit(plan)  # queued: no worker serves it yet
        await coordinator.cancel(cancelled.run_id)
        assert await asyncio.wait_for(cancelled.done, WAIT) is RunStatus.CANCELLED
        later = await coordinator.submit(plan)  # queued behind the cancelled one
        async with Worker(transport, MemoryObjectStore(), steps, WorkerConfig(**QUICK)) as worker:
            await worker.serve("default")
            assert await asyncio.wait_for(later.done, WAIT) is RunStatus.SUCCEEDED
    assert calls == [later.run_id]  # the cancelled run's step was skipped, not run
    assert transport.queue_depth(step_queue("default")) == 0


async def test_a_busy_worker_skips_the_queued_steps_of_a_run_cancelled_meanwhile(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    calls: list[str] = []
    release = asyncio.Event()

    @step
    async def blocker() -> str:
        await release.wait()
        return "released"

    p, steps = one_step("waiting", calls)

    @pipeline
    def blocked() -> object:
        return blocker()

    config = WorkerConfig(concurrency=1, **QUICK)  # one step at a time: the rest waits queued
    async with (
        Coordinator(transport, store) as coordinator,
        Worker(transport, MemoryObjectStore(), {**steps, "blocker": blocker}, config) as worker,
    ):
        await worker.serve("default")
        busy = await coordinator.submit(blocked.compile().plan)
        await wait_for_event(coordinator.events(busy.run_id), EventKind.STEP_STARTED)
        doomed = await coordinator.submit(p.compile().plan)
        await coordinator.cancel(doomed.run_id)
        assert await asyncio.wait_for(doomed.done, WAIT) is RunStatus.CANCELLED
        release.set()
        assert await asyncio.wait_for(busy.done, WAIT) is RunStatus.SUCCEEDED
        after = await coordinator.submit(p.compile().plan)
        assert await asyncio.wait_for(after.done, WAIT) is RunStatus.SUCCEEDED
    assert calls == [after.run_id]


async def test_cancelling_a_run_cancels_its_attempts_in_flight_and_acks_them(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    started, stopped = asyncio.Event(), asyncio.Event()

    @step
    async def endless() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            stopped.set()

    @pipeline
    def p() -> object:
        return endless()

    async with (
        Coordinator(transport, store) as coordinator,
        Worker(transport, MemoryObjectStore(), {"endless": endless}, WorkerConfig(**QUICK)) as w,
    ):
        await w.serve("default")
        run = await coordinator.submit(p.compile().plan)
        await asyncio.wait_for(started.wait(), WAIT)
        await coordinator.cancel(run.run_id)
        await asyncio.wait_for(stopped.wait(), WAIT)
        assert await asyncio.wait_for(run.done, WAIT) is RunStatus.CANCELLED
    assert transport.queue_depth(step_queue("default")) == 0


# -- a graceful drain ------------------------------------------------------------------------


async def test_a_draining_worker_finishes_its_steps_and_hands_none_of_them_to_another(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    attempts: list[int] = []
    started, release = asyncio.Event(), asyncio.Event()

    @step
    async def long() -> str:
        attempts.append(aexec.current().attempt)
        started.set()
        await release.wait()
        return "finished"

    @pipeline
    def p() -> object:
        return long()

    steps = {"long": long}
    objects = MemoryObjectStore()
    async with (
        Coordinator(transport, store) as coordinator,
        Worker(transport, objects, steps, WorkerConfig(name="draining", **QUICK)) as draining,
        Worker(transport, objects, steps, WorkerConfig(name="other", **QUICK)) as other,
    ):
        await draining.serve("default")
        run = await coordinator.submit(p.compile().plan)
        await asyncio.wait_for(started.wait(), WAIT)
        await other.serve("default")
        drained = asyncio.ensure_future(draining.drain())
        await asyncio.sleep(QUIET)
        assert not drained.done()  # its step holds it
        assert other.in_flight == 0  # and nothing was handed to the other worker
        release.set()
        await asyncio.wait_for(drained, WAIT)
        assert await asyncio.wait_for(run.done, WAIT) is RunStatus.SUCCEEDED
    assert attempts == [1]
    (record,) = await store.get_steps(run.run_id)
    assert (record.status, record.attempts, record.worker) == (StepStatus.SUCCEEDED, 1, "draining")


async def test_a_worker_stopping_past_its_grace_reports_its_steps_lost_for_a_new_attempt(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    attempts: list[int] = []
    started = asyncio.Event()

    @step
    async def long() -> str:
        attempts.append(aexec.current().attempt)
        if len(attempts) == 1:
            started.set()
            await asyncio.sleep(3600)
        return "finished"

    @pipeline
    def p() -> object:
        return long()

    objects = MemoryObjectStore()
    steps = {"long": long}
    async with Coordinator(transport, store) as coordinator:
        leaving = Worker(transport, objects, steps, WorkerConfig(drain_grace=0.1, **QUICK))
        async with leaving:
            await leaving.serve("default")
            run = await coordinator.submit(p.compile().plan)
            await asyncio.wait_for(started.wait(), WAIT)
            await asyncio.wait_for(leaving.drain(), WAIT)
        async with Worker(transport, objects, steps, WorkerConfig(**QUICK)) as heir:
            await heir.serve("default")
            assert await asyncio.wait_for(run.done, WAIT) is RunStatus.SUCCEEDED
    assert attempts == [1, 2]  # no retry spent: attempt 2 is the one the lost one gave way to
    events = await store.get_events(run.run_id)
    (lost,) = [e for e in events if e.kind is EventKind.STEP_RETRYING]
    assert lost.attempt == 1 and lost.data["error"]["type"] == "WorkerLostError"
    assert "stopped past its grace" in lost.data["error"]["message"]


# -- a step's own CancelledError -------------------------------------------------------------


async def test_a_step_raising_its_own_cancelled_error_fails_and_spends_its_retries(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    attempts: list[int] = []

    @step(retries=1)
    async def gives_up() -> None:
        attempts.append(aexec.current().attempt)
        inner = asyncio.ensure_future(asyncio.sleep(3600))
        inner.cancel()
        await inner  # a cancelled inner task: CancelledError, not the worker's cancellation

    @pipeline
    def p() -> object:
        return gives_up()

    async with (
        Coordinator(transport, store) as coordinator,
        Worker(transport, MemoryObjectStore(), {"gives_up": gives_up}, WorkerConfig(**QUICK)) as w,
    ):
        await w.serve("default")
        run = await coordinator.submit(p.compile().plan)
        assert await asyncio.wait_for(run.done, WAIT) is RunStatus.FAILED
    assert attempts == [1, 2]
    (record,) = await store.get_steps(run.run_id)
    assert record.status is StepStatus.FAILED and record.attempts == 2
    assert record.error is not None and record.error.type == "CancelledError"


# -- sync steps see their cancellation -------------------------------------------------------


def watchful(started: threading.Event, saw: threading.Event) -> aexec.StepDef:
    @step
    def watch() -> str:
        started.set()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if aexec.current().cancelled:
                saw.set()
                return "cancelled"
            time.sleep(0.01)
        return "never told"

    return watch


async def test_a_sync_step_sees_that_its_run_was_cancelled(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    started, saw = threading.Event(), threading.Event()
    watch = watchful(started, saw)

    @pipeline
    def p() -> object:
        return watch()

    async with (
        Coordinator(transport, store) as coordinator,
        Worker(transport, MemoryObjectStore(), {"watch": watch}, WorkerConfig(**QUICK)) as w,
    ):
        await w.serve("default")
        run = await coordinator.submit(p.compile().plan)
        await asyncio.to_thread(started.wait, WAIT)
        await coordinator.cancel(run.run_id)
        assert await asyncio.to_thread(saw.wait, WAIT)


async def test_a_sync_step_sees_that_its_worker_stopped_past_its_grace(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    started, saw = threading.Event(), threading.Event()
    watch = watchful(started, saw)

    @pipeline
    def p() -> object:
        return watch()

    async with Coordinator(transport, store) as coordinator:
        config = WorkerConfig(drain_grace=0.05, **QUICK)
        async with Worker(transport, MemoryObjectStore(), {"watch": watch}, config) as w:
            await w.serve("default")
            await coordinator.submit(p.compile().plan)
            await asyncio.to_thread(started.wait, WAIT)
            await asyncio.wait_for(w.drain(), WAIT)
        assert await asyncio.to_thread(saw.wait, WAIT)


async def test_a_sync_step_sees_that_its_timeout_fired(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    started, saw = threading.Event(), threading.Event()

    @step(timeout=0.05)
    def watch() -> str:
        started.set()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and not aexec.current().cancelled:
            time.sleep(0.01)
        saw.set()
        return "done"

    @pipeline
    def p() -> object:
        return watch()

    async with (
        Coordinator(transport, store) as coordinator,
        Worker(transport, MemoryObjectStore(), {"watch": watch}, WorkerConfig(**QUICK)) as w,
    ):
        await w.serve("default")
        run = await coordinator.submit(p.compile().plan)
        assert await asyncio.wait_for(run.done, WAIT) is RunStatus.FAILED
        assert await asyncio.to_thread(saw.wait, WAIT)


# -- every task owned ------------------------------------------------------------------------


async def test_a_worker_leaves_no_task_behind_once_drained(
    transport: MemoryTransport, store: MemoryStore
) -> None:
    before = asyncio.all_tasks()

    @step
    async def quick() -> int:
        return 1

    @pipeline
    def p() -> object:
        return quick()

    async with Coordinator(transport, store) as coordinator:
        with_coordinator = asyncio.all_tasks()
        async with Worker(transport, MemoryObjectStore(), {"quick": quick}) as worker:
            await worker.serve("default")
            await worker.listen_for_control()
            run = await coordinator.submit(p.compile().plan)
            assert await asyncio.wait_for(run.done, WAIT) is RunStatus.SUCCEEDED
        assert asyncio.all_tasks() == with_coordinator
    assert asyncio.all_tasks() == before


# -- --pool process: a child that dies -------------------------------------------------------

CRASHING_STEPS = '''
import os
import signal
from pathlib import Path

from aexec import current, step


@step
def die_once(marker: str) -> str:
    """Kills its own process the first time (as the OOM killer would), then succeeds."""
    if not Path(marker).exists():
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return f"survived on attempt {current().attempt}"


@step
def always_die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@step
def add(a: int, b: int) -> int:
    return a + b
'''


async def test_a_dead_child_process_loses_its_attempt_and_the_pool_is_replaced(
    transport: MemoryTransport, store: MemoryStore, tmp_path: Path
) -> None:
    module = tmp_path / "crashing_steps.py"
    module.write_text(CRASHING_STEPS)
    loaded = load_file(module)

    @pipeline
    def p(marker: str) -> object:
        survived = loaded.die_once(marker)
        return [survived, loaded.add(1, 2)]

    compiled = p.compile(marker=str(tmp_path / "died"))
    config = WorkerConfig(pool="process", process_pool_size=1, modules=(str(module),), **QUICK)
    async with (
        Coordinator(transport, store) as coordinator,
        Worker(transport, MemoryObjectStore(), compiled.steps, config) as worker,
    ):
        await worker.serve("default")
        run = await coordinator.submit(compiled.plan)
        assert await asyncio.wait_for(run.done, 60) is RunStatus.SUCCEEDED
        later = await coordinator.submit(compiled.plan)  # the new pool serves later steps
        assert await asyncio.wait_for(later.done, 60) is RunStatus.SUCCEEDED
    steps = {s.key: s for s in await store.get_steps(run.run_id)}
    assert (steps["die_once"].status, steps["die_once"].attempts) == (StepStatus.SUCCEEDED, 2)
    assert steps["add"].status is StepStatus.SUCCEEDED
    events = await store.get_events(run.run_id)
    (lost,) = [e for e in events if e.kind is EventKind.STEP_RETRYING]
    assert lost.attempt == 1 and lost.data["error"]["type"] == "WorkerLostError"
    assert "lost the child process" in lost.data["error"]["message"]


async def test_a_step_that_kills_its_child_every_time_fails_after_the_lost_attempts_bound(
    transport: MemoryTransport, store: MemoryStore, tmp_path: Path
) -> None:
    module = tmp_path / "crashing_steps.py"
    module.write_text(CRASHING_STEPS)
    loaded = load_file(module)

    @pipeline
    def p() -> object:
        return loaded.always_die()

    compiled = p.compile()
    config = WorkerConfig(pool="process", process_pool_size=1, modules=(str(module),), **QUICK)
    async with (
        Coordinator(transport, store) as coordinator,
        Worker(transport, MemoryObjectStore(), compiled.steps, config) as worker,
    ):
        await worker.serve("default")
        run = await coordinator.submit(compiled.plan)
        assert await asyncio.wait_for(run.done, 120) is RunStatus.FAILED
    (record,) = await store.get_steps(run.run_id)
    assert record.status is StepStatus.FAILED and record.attempts == MAX_LOST + 1
    assert record.error is not None and record.error.type == "WorkerLostError"
