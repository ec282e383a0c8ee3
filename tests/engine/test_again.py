"""``aexec.again`` on the memory adapters: durable waits kept by the coordinator."""

from __future__ import annotations

import asyncio
import itertools
import time

import aexec
import aexec.testing
from aexec import pipeline, step
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.errors import RunFailed
from aexec.events import EventKind
from aexec.objects.memory import MemoryObjectStore
from aexec.store.memory import MemoryStore
from aexec.testing import wait_for_event
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus, StepStatus
from aexec.worker import Worker, WorkerConfig


async def test_a_step_polls_without_holding_the_only_worker_slot() -> None:
    checks: list[float] = []
    others: list[float] = []

    @step(max_wait=30)
    async def healthy() -> object:
        checks.append(time.monotonic())
        if len(checks) < 3:
            return aexec.again(after=0.2, reason="ceph not healthy yet")
        return "healthy"

    @step
    async def other(i: int) -> int:
        others.append(time.monotonic())
        return i

    @pipeline
    def p() -> object:
        return [healthy(), [other.alias(f"o{i}")(i) for i in range(3)]]

    async with aexec.testing.executor(concurrency=1) as ex:
        run = await ex.submit(p)
        assert await run.result() == ["healthy", [0, 1, 2]]
        (row,) = [s for s in await ex.get_steps(run.run_id) if s.key == "healthy"]
        assert row.attempts == 3 and row.failures == 0
        waits = [
            e for e in await ex.store.get_events(run.run_id) if e.kind is EventKind.STEP_WAITING
        ]
    assert [w.data["reason"] for w in waits] == ["ceph not healthy yet"] * 2
    assert all(b - a >= 0.19 for a, b in itertools.pairwise(checks))
    assert max(others) < checks[-1]  # the others ran while it waited, on the one slot


async def test_max_wait_fails_the_step_with_a_clear_error() -> None:
    @step(max_wait=0.3)
    async def never() -> object:
        return aexec.again(after=0.1, reason="still degraded")

    @pipeline
    def p() -> object:
        return never()

    async with aexec.testing.executor() as ex:
        run = await ex.submit(p)
        try:
            await run.result()
        except RunFailed as exc:
            assert "WaitTimeoutError" in str(exc) and "still degraded" in str(exc)
            assert "max_wait=0.3 s" in str(exc)
        else:
            raise AssertionError("the run should have failed")
        (row,) = await ex.get_steps(run.run_id)
        assert row.status is StepStatus.FAILED and row.attempts >= 3


async def test_a_wait_survives_a_takeover_and_runs_once_at_its_time() -> None:
    checks: list[float] = []

    @step
    async def poll() -> object:
        checks.append(time.time())
        if len(checks) == 1:
            return aexec.again(after=1.0, reason="not yet")
        return "ready"

    @pipeline
    def p() -> object:
        return poll()

    compiled = p.compile()
    transport, store = MemoryTransport(), MemoryStore()
    await transport.open()
    await store.open()
    fast = dict(lease=0.3, worker_timeout=2.0)
    worker = Worker(
        transport,
        MemoryObjectStore(),
        compiled.steps,
        WorkerConfig(name="w", heartbeat_interval=0.05, ack_after=0.1),
    )
    async with worker:
        await worker.serve("default")
        doomed = Coordinator(transport, store, CoordinatorConfig(id="doomed", **fast))
        await doomed.__aenter__()
        run = await doomed.submit(compiled.plan)
        waiting = await wait_for_event(store.follow(run.run_id), EventKind.STEP_WAITING)
        await doomed.abort()  # its timer dies with it
        heir = Coordinator(transport, store, CoordinatorConfig(id="heir", adopt=True, **fast))
        async with heir:
            await asyncio.wait_for(
                wait_for_event(store.follow(run.run_id), EventKind.RUN_SUCCEEDED), 10
            )
    record = await store.get_run(run.run_id)
    assert record is not None and record.status is RunStatus.SUCCEEDED
    assert len(checks) == 2  # once before, once after: never twice
    assert checks[1] >= waiting.data["due"] - 0.05  # not before its time
    (row,) = await store.get_steps(run.run_id)
    assert row.attempts == 2
    await store.close()
    await transport.close()
