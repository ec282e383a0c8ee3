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


@step(when=is_big)  # declared: runs only if is_big, called in the same body, is true
async def triple(x: int) -> int:
    return 3 * x


@pipeline
def declared(n: int = 0) -> object:
    is_big(n)
    return report(triple(n), double(n))


@pipeline
def declared_inside(n: int = 0) -> object:
    """A sub-pipeline's condition is the call in its own body, not its parent's."""
    is_big.alias("outer_check")(100)
    return declared.alias("inner")(n)


async def test_a_step_declared_with_when_runs_only_if_that_step_is_true(ex: Executor) -> None:
    small = await ex.submit(declared, n=1)
    assert await small.result() == [None, 2]
    steps = {s.key: s.status for s in await ex.get_steps(small.run_id)}
    assert steps == {
        "is_big": StepStatus.SUCCEEDED,
        "triple": StepStatus.SKIPPED,
        "double": StepStatus.SUCCEEDED,
        "report": StepStatus.SUCCEEDED,
    }
    (skipped,) = [e for e in await ex.get_events(small.run_id) if e.kind is EventKind.STEP_SKIPPED]
    assert skipped.step == "triple" and skipped.data["reason"] == "its condition 'is_big' is false"
    assert await (await ex.submit(declared, n=5)).result() == [15, 10]
    inner = await ex.submit(declared_inside, n=1)
    assert await inner.result() == [None, 2]
    plan = declared_inside.compile(n=1).plan
    assert plan.step("inner.triple").when == plan.index["inner.is_big"]


async def test_a_when_at_the_call_overrides_the_declared_one(ex: Executor) -> None:
    @pipeline
    def overridden(n: int = 1) -> object:
        is_big(n)
        return triple(n, when=is_big.alias("other")(n + 10))

    assert await (await ex.submit(overridden, n=1)).result() == 3


@pytest.mark.parametrize(
    ("calls", "fragment"),
    [(0, "calls 'is_big' never before it"), (2, "calls 'is_big' 2 times before it")],
)
async def test_a_declared_condition_must_name_one_call_of_its_step(
    calls: int, fragment: str
) -> None:
    @pipeline
    def ambiguous() -> object:
        for i in range(calls):
            is_big(i)
        return triple(1)

    with pytest.raises(DefinitionError, match=fragment):
        ambiguous.compile()


async def test_a_step_decorated_in_a_body_takes_an_output_handle_as_its_condition(
    ex: Executor,
) -> None:
    @pipeline
    def inline(n: int = 1) -> object:
        big = is_big(n)

        @step(name="quadruple", when=big)
        async def quadruple(x: int) -> int:
            return 4 * x

        return report(quadruple(n), quadruple.alias("again")(n + 1))

    assert await (await ex.submit(inline, n=1)).result() == [None, None]
    assert await (await ex.submit(inline, n=3)).result() == [12, 16]


def test_when_on_the_decorator_takes_a_handle_or_a_step() -> None:
    with pytest.raises(DefinitionError, match="when= must be an output handle or a step"):
        step(when=True)(lambda: None)  # type: ignore[call-overload]


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
