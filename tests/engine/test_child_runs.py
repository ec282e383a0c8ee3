"""Sub-pipelines run as child runs (``run_as_child=True``) on the memory adapters: linked
to their parent, with their own retries and cancellation, created once per attempt even
across a takeover."""

from __future__ import annotations

import asyncio

import pytest

from aexec import pipeline, step
from aexec.children import WORKER_PREFIX, child_run_id
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.errors import RunFailed
from aexec.events import EventKind
from aexec.executor import Executor
from aexec.gateway import GatewayStep
from aexec.objects.memory import MemoryObjectStore
from aexec.plan import CHILD
from aexec.store.memory import MemoryStore
from aexec.testing import wait_for_event
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus, StepStatus
from aexec.worker import Worker, WorkerConfig

flaky_calls: list[str] = []


@step
async def drain(node: str, after: object = None) -> str:
    return f"{node} drained" + ("" if after is None else f" after [{after}]")


@step(retries=1, retry_backoff=0.01)
async def swap(drained: str) -> str:
    flaky_calls.append(drained)
    if drained.startswith("flaky") and flaky_calls.count(drained) == 1:
        raise OSError("the disk is not there yet")
    if drained.startswith("broken"):
        raise ValueError(f"cannot swap {drained}")
    return drained.replace("drained", "replaced")


@pipeline
def replace(node: str, after: object = None) -> object:
    return swap(drain(node, after))


@step
async def report(results: list[str]) -> str:
    return " | ".join(results)


@pipeline
def replace_all(nodes: list[str]) -> object:
    done: list[object] = []
    previous = None
    for node in nodes:
        previous = replace.alias(node)(node, previous, run_as_child=True)
        done.append(previous)
    return report(done)


async def test_a_child_run_gives_its_result_to_the_parent_step(ex: Executor) -> None:
    flaky_calls.clear()
    run = await ex.submit(replace_all, nodes=["a", "b"])
    assert await run.result() == "a replaced | b replaced after [a replaced]"
    rows = {s.key: s for s in await ex.get_steps(run.run_id)}
    assert set(rows) == {"a", "b", "report"}  # a child's steps are its own run's
    for key in ("a", "b"):
        child_id = child_run_id(run.run_id, key)
        assert rows[key].status is StepStatus.SUCCEEDED
        assert rows[key].worker == WORKER_PREFIX + child_id
        child = await ex.store.get_run(child_id)
        assert child is not None and child.status is RunStatus.SUCCEEDED
        assert (child.parent, child.parent_step, child.pipeline) == (run.run_id, key, "replace")
        child_rows = {s.key: s.status for s in await ex.get_steps(child_id)}
        assert child_rows == {"drain": StepStatus.SUCCEEDED, "swap": StepStatus.SUCCEEDED}
    b = await ex.store.get_run(child_run_id(run.run_id, "b"))
    assert b is not None and b.params == {"node": "b", "after": "a replaced"}


async def test_a_child_retries_its_own_steps(ex: Executor) -> None:
    flaky_calls.clear()
    run = await ex.submit(replace_all, nodes=["flaky"])
    assert await run.result() == "flaky replaced"
    child_id = child_run_id(run.run_id, "flaky")
    swap_row = {s.key: s for s in await ex.get_steps(child_id)}["swap"]
    assert swap_row.attempts == 2
    (parent_step,) = [s for s in await ex.get_steps(run.run_id) if s.key == "flaky"]
    assert parent_step.attempts == 1


async def test_a_failed_child_fails_its_parent_step_and_run(ex: Executor) -> None:
    flaky_calls.clear()
    run = await ex.submit(replace_all, nodes=["broken", "c"])
    with pytest.raises(RunFailed):
        await run.result()
    rows = {s.key: s for s in await ex.get_steps(run.run_id)}
    child_id = child_run_id(run.run_id, "broken")
    error = rows["broken"].error
    assert error is not None and error.type == "ChildRunError"
    assert f"child run {child_id} failed" in error.message
    assert "cannot swap broken drained" in error.message
    assert rows["c"].status is StepStatus.SKIPPED  # its input failed: never created
    assert await ex.store.get_run(child_run_id(run.run_id, "c")) is None


gates: list[asyncio.Event] = []  # the current test's (an event belongs to one loop)


@step
async def held(node: str) -> str:
    await gates[-1].wait()
    return node


@pipeline
def hold(node: str) -> object:
    return held(node)


@pipeline
def holds() -> object:
    return hold("x", run_as_child=True)


async def test_cancelling_the_parent_cancels_the_child(ex: Executor) -> None:
    gates.append(asyncio.Event())
    run = await ex.submit(holds)
    child_id = child_run_id(run.run_id, "hold")
    await wait_for_event(run, EventKind.STEP_STARTED, step="hold")
    await wait_for_event(ex.store.follow(child_id), EventKind.STEP_STARTED, step="held")
    await run.cancel()
    ended = await asyncio.wait_for(
        wait_for_event(ex.store.follow(child_id), EventKind.RUN_CANCELLED), 10
    )
    assert "was cancelled" in str(ended.data)
    parent = await ex.store.get_run(run.run_id)
    assert parent is not None and parent.status is RunStatus.CANCELLED


async def test_a_child_survives_a_takeover_and_is_created_once() -> None:
    gates.append(gate := asyncio.Event())
    compiled = holds.compile()
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
        child_id = child_run_id(run.run_id, "hold")
        await wait_for_event(store.follow(run.run_id), EventKind.STEP_STARTED, step="hold")
        await wait_for_event(store.follow(child_id), EventKind.STEP_STARTED, step="held")
        await doomed.abort()
        heir = Coordinator(transport, store, CoordinatorConfig(id="heir", adopt=True, **fast))
        async with heir:
            await wait_for_event(store.follow(run.run_id), EventKind.RUN_RESUMED)
            gate.set()
            await asyncio.wait_for(
                wait_for_event(store.follow(run.run_id), EventKind.RUN_SUCCEEDED), 10
            )
    parent = await store.get_run(run.run_id)
    assert parent is not None and parent.status is RunStatus.SUCCEEDED
    children = [r for r in await store.list_runs(limit=10) if r.parent == run.run_id]
    assert [c.run_id for c in children] == [child_id]  # created once
    (row,) = await store.get_steps(run.run_id)
    assert (row.status, row.attempts) == (StepStatus.SUCCEEDED, 1)
    await store.close()
    await transport.close()


async def test_child_runs_start_even_when_admission_is_full() -> None:
    """The parent holds the only run slot; its children are part of its work, not runs
    that wait behind it (they would wait forever)."""
    import aexec.testing

    flaky_calls.clear()
    async with aexec.testing.executor(max_concurrent_runs=1) as ex:
        run = await ex.submit(replace_all, nodes=["a", "b"])
        result = await asyncio.wait_for(run.result(), 10)
        assert result == "a replaced | b replaced after [a replaced]"
        other = await ex.submit(replace_all, nodes=["c"])  # the slot is free again
        assert await asyncio.wait_for(other.result(), 10) == "c replaced"


@pipeline
def relay(node: str, after: object = None) -> object:
    """A child that hands its own input (known only when it starts) to a child of its own."""
    return replace(node, after, run_as_child=True)


@pipeline
def nested() -> object:
    first = drain.alias("first")("root")
    return relay("n", first, run_as_child=True)


async def test_a_child_passes_its_inputs_on_to_its_own_children(ex: Executor) -> None:
    flaky_calls.clear()
    run = await ex.submit(nested)
    assert await run.result() == "n replaced after [root replaced]"
    middle = child_run_id(run.run_id, "relay")
    grandchild = await ex.store.get_run(child_run_id(middle, "replace"))
    assert grandchild is not None and grandchild.params == {"node": "n", "after": "root drained"}
    assert (grandchild.parent, grandchild.parent_step) == (middle, "replace")


async def test_a_child_step_dispatched_again_follows_the_child_it_started(ex: Executor) -> None:
    """A new attempt of the step (its dispatch unconfirmed when its coordinator stopped, or
    its "worker" lost) finds the child already there: never a second one."""
    gates.append(gate := asyncio.Event())
    run = await ex.submit(holds)
    await wait_for_event(run, EventKind.STEP_STARTED, step="hold")
    coordinator = ex._coordinator
    assert coordinator is not None
    step = run.plan.step("hold")
    again = GatewayStep(run.run_id, step.index, 2, step, [], 0)
    assert await coordinator.gateways[CHILD].publish([again]) == [again]
    gate.set()
    assert await asyncio.wait_for(run.result(), 10) == "x"
    children = [r.run_id for r in await ex.store.list_runs(limit=10) if r.parent == run.run_id]
    assert children == [child_run_id(run.run_id, "hold")]


async def test_a_child_that_cannot_start_fails_its_step_with_the_reason(ex: Executor) -> None:
    from aexec.celery import celery_step

    resize = celery_step("proj.tasks.resize", queue="images")

    @pipeline
    def on_celery(path: str) -> object:
        return resize(path)

    @pipeline
    def parent() -> object:
        return on_celery("a.png", run_as_child=True)

    run = await ex.submit(parent)
    with pytest.raises(RunFailed):
        await asyncio.wait_for(run.result(), 10)
    (row,) = await ex.get_steps(run.run_id)
    assert row.error is not None and row.error.type == "ConfigError"
    assert row.error.message.startswith("cannot start the child run: pipeline 'on_celery' has")
