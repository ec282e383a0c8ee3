"""Conditional branches on the memory adapters: ``aexec.skip``, ``when=``, joins, takeover."""

from __future__ import annotations

import asyncio

import pytest

import aexec
from aexec import codec, pipeline, step
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.errors import DefinitionError
from aexec.events import EventKind
from aexec.executor import Executor
from aexec.objects.memory import MemoryObjectStore
from aexec.store.memory import MemoryStore
from aexec.testing import wait_for_event
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus, StepStatus
from aexec.worker import Worker, WorkerConfig


@step
async def is_big(n: int) -> bool:
    return n > 2


@step
async def new_files(n: int) -> object:
    if n == 0:
        return aexec.skip("no new files")
    return list(range(n))


@step
def count(files: list[int]) -> int:  # sync: the skip travels from a thread as well
    return len(files)


@step
async def double(x: int) -> int:
    return 2 * x


@step(accept_missing=True)
async def report(*parts: object) -> list[object]:
    return list(parts)


@pipeline
def branches(n: int = 0) -> object:
    big = double.alias("big")(n, when=is_big(n))
    counted = count(new_files(n))
    return report(big, counted, double.alias("always")(n))


async def test_skipped_branches_do_not_run_and_do_not_fail_the_run(ex: Executor) -> None:
    run = await ex.submit(branches, n=0)
    assert await run.result() == [None, None, 0]  # join semantics: None for what was skipped
    steps = {s.key: s for s in await ex.get_steps(run.run_id)}
    assert {k: s.status for k, s in steps.items()} == {
        "is_big": StepStatus.SUCCEEDED,
        "big": StepStatus.SKIPPED,
        "new_files": StepStatus.SKIPPED,
        "count": StepStatus.SKIPPED,
        "always": StepStatus.SUCCEEDED,
        "report": StepStatus.SUCCEEDED,
    }
    assert steps["new_files"].attempts == 1 and steps["count"].attempts == 0
    reasons = {
        e.step: e.data.get("reason")
        for e in await ex.store.get_events(run.run_id)
        if e.kind is EventKind.STEP_SKIPPED
    }
    assert reasons == {
        "big": "its condition 'is_big' is false",
        "new_files": "no new files",
        "count": "its input 'new_files' was skipped",
    }


async def test_branches_whose_conditions_hold_run(ex: Executor) -> None:
    run = await ex.submit(branches, n=3)
    assert await run.result() == [6, 3, 6]


async def test_when_takes_only_an_output_handle() -> None:
    @pipeline
    def bad() -> object:
        return double(1, when=True)

    with pytest.raises(DefinitionError, match="when= of step 'double' must be the output"):
        bad.compile()


async def test_a_skip_and_a_join_are_restored_identically_after_a_takeover() -> None:
    gate, started = asyncio.Event(), asyncio.Event()
    ran: list[str] = []

    @step
    async def nothing() -> object:
        ran.append("nothing")
        return aexec.skip("not today")

    @step
    async def slow() -> int:
        ran.append("slow")
        started.set()
        await gate.wait()
        return 5

    @step
    async def after(x: int) -> int:
        ran.append("after")
        return x

    @step(accept_missing=True)
    async def join(a: object, b: object) -> list[object]:
        ran.append("join")
        return [a, b]

    @pipeline
    def p() -> object:
        return join(after(nothing()), slow())

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
        await asyncio.wait_for(started.wait(), 5)
        await wait_for_event(store.follow(run.run_id), EventKind.STEP_SKIPPED, step="after")
        await wait_for_event(store.follow(run.run_id), EventKind.STEP_STARTED, step="slow")
        await doomed.abort()
        heir = Coordinator(transport, store, CoordinatorConfig(id="heir", adopt=True, **fast))
        async with heir:
            await wait_for_event(store.follow(run.run_id), EventKind.RUN_RESUMED)
            gate.set()
            await wait_for_event(store.follow(run.run_id), EventKind.RUN_SUCCEEDED)
    record = await store.get_run(run.run_id)
    assert record is not None and record.status is RunStatus.SUCCEEDED
    assert record.result is not None and codec.decode(record.result) == [None, 5]
    assert sorted(ran) == ["join", "nothing", "slow"]  # each once; "after" never
    events = await store.get_events(run.run_id)
    assert [e.step for e in events if e.kind is EventKind.STEP_SKIPPED] == ["nothing", "after"]
    await store.close()
    await transport.close()
