"""``step.map(handle)`` on the memory adapters: expansion at run time, collect, map of map,
empty lists, bad inputs, and a takeover in the middle of an expansion."""

from __future__ import annotations

import asyncio
from collections import Counter

import aexec
from aexec import codec, pipeline, step
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.errors import RunFailed
from aexec.events import EventKind
from aexec.executor import Executor
from aexec.objects.memory import MemoryObjectStore
from aexec.store.memory import MemoryStore
from aexec.testing import wait_for_event
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus, StepStatus
from aexec.worker import Worker, WorkerConfig


@step
async def listing(n: int) -> object:
    return list(range(n)) if n >= 0 else {"not": "a list"}


@step
def square(x: int, plus: int = 0) -> int:  # sync: runs in a thread
    return x * x + plus


@step
async def split(x: int) -> list[int]:
    return [x, 10 * x]


@step
async def total(values: list[object]) -> int:
    return sum(v for v in values if isinstance(v, int))


@step
async def odd_only(x: int) -> object:
    return x if x % 2 else aexec.skip(f"{x} is even")


@pipeline
def squares(n: int = 4) -> object:
    squared = square.map(listing(n), plus=1)  # one step per item, known at run time
    return {"each": squared, "total": total(squared)}


@pipeline
def nested(n: int = 3) -> object:
    items = listing(n)
    return [split.map(items), total(odd_only.map(items))]


async def test_a_map_runs_one_step_per_item_and_collects_their_outputs(ex: Executor) -> None:
    run = await ex.submit(squares, n=4)
    assert await run.result() == {"each": [1, 2, 5, 10], "total": 18}
    steps = {s.key: s for s in await ex.get_steps(run.run_id)}
    assert [k for k in steps if k.startswith("square[")] == [f"square[{i}]" for i in range(4)]
    assert all(steps[f"square[{i}]"].status is StepStatus.SUCCEEDED for i in range(4))
    assert steps["square"].status is StepStatus.SUCCEEDED and steps["square"].attempts == 0
    events = await ex.store.get_events(run.run_id)
    (expanded,) = [e for e in events if e.kind is EventKind.STEP_EXPANDED]
    assert expanded.step == "square" and expanded.data["count"] == 4


async def test_an_empty_list_maps_to_no_step_and_an_empty_result(ex: Executor) -> None:
    run = await ex.submit(squares, n=0)
    assert await run.result() == {"each": [], "total": 0}
    assert [s.key for s in await ex.get_steps(run.run_id)] == ["listing", "square", "total"]


async def test_a_map_collects_lists_and_none_for_items_that_skipped(ex: Executor) -> None:
    run = await ex.submit(nested, n=3)
    assert await run.result() == [[[0, 0], [1, 10], [2, 20]], 1]
    steps = {s.key: s.status for s in await ex.get_steps(run.run_id)}
    assert steps["odd_only[0]"] is StepStatus.SKIPPED  # by decision: collected as None
    assert steps["odd_only"] is StepStatus.SUCCEEDED


async def test_a_map_of_a_map_expands_each_level(ex: Executor) -> None:
    @step
    async def count_up(x: int) -> list[int]:
        return list(range(x))

    @step
    async def lengths(xs: list[int]) -> int:
        return len(xs)

    @pipeline
    def levels() -> object:
        nested_lists = count_up.map(listing(4))  # [[], [0], [0, 1], [0, 1, 2]]
        return lengths.map(nested_lists)

    run = await ex.submit(levels)
    assert await run.result() == [0, 1, 2, 3]


async def test_mapping_over_something_else_than_a_list_fails_the_map_clearly(
    ex: Executor,
) -> None:
    run = await ex.submit(squares, n=-1)
    try:
        await run.result()
    except RunFailed as exc:
        assert "cannot map step 'square': it maps over a dict, not a list" in str(exc)
    else:
        raise AssertionError("the run should have failed")
    steps = {s.key: s.status for s in await ex.get_steps(run.run_id)}
    assert steps == {
        "listing": StepStatus.SUCCEEDED,
        "square": StepStatus.FAILED,
        "total": StepStatus.SKIPPED,
    }


async def test_an_expansion_is_restored_with_the_same_keys_after_a_takeover() -> None:
    release = asyncio.Event()
    held = 0
    ran: Counter[int] = Counter()
    all_held = asyncio.Event()

    @step
    async def items() -> list[int]:
        return list(range(6))

    @step
    async def work(x: int) -> int:
        nonlocal held
        ran[x] += 1
        if x >= 3:  # half the items finish before the takeover, half after
            held += 1
            if held == 3:
                all_held.set()
            await release.wait()
        return x * 2

    @step
    async def add_up(values: list[int]) -> int:
        return sum(values)

    @pipeline
    def p() -> object:
        return add_up(work.map(items()))

    compiled = p.compile()
    transport, store = MemoryTransport(), MemoryStore()
    await transport.open()
    await store.open()
    fast = dict(lease=0.3, worker_timeout=2.0)
    worker = Worker(
        transport,
        MemoryObjectStore(),
        compiled.steps,
        WorkerConfig(name="w", concurrency=8, heartbeat_interval=0.05, ack_after=0.1),
    )
    async with worker:
        await worker.serve("default")
        doomed = Coordinator(transport, store, CoordinatorConfig(id="doomed", **fast))
        await doomed.__aenter__()
        run = await doomed.submit(compiled.plan)
        await asyncio.wait_for(all_held.wait(), 5)
        for i in range(3, 6):  # recorded as running: their worker's heartbeats keep them
            await wait_for_event(
                store.follow(run.run_id), EventKind.STEP_STARTED, step=f"work[{i}]"
            )
        for i in range(3):
            await wait_for_event(
                store.follow(run.run_id), EventKind.STEP_SUCCEEDED, step=f"work[{i}]"
            )
        await doomed.abort()
        heir = Coordinator(transport, store, CoordinatorConfig(id="heir", adopt=True, **fast))
        async with heir:
            await wait_for_event(store.follow(run.run_id), EventKind.RUN_RESUMED)
            release.set()
            await wait_for_event(store.follow(run.run_id), EventKind.RUN_SUCCEEDED)
    record = await store.get_run(run.run_id)
    assert record is not None and record.status is RunStatus.SUCCEEDED
    assert record.result is not None and codec.decode(record.result) == 30
    assert ran == Counter({i: 1 for i in range(6)})  # no item ran twice
    events = await store.get_events(run.run_id)
    assert [e.step for e in events if e.kind is EventKind.STEP_EXPANDED] == ["work"]  # once
    keys = [s.key for s in await store.get_steps(run.run_id)]
    assert keys == ["items", "work", "add_up", *(f"work[{i}]" for i in range(6))]
    await store.close()
    await transport.close()


async def test_map_key_names_each_step_by_a_field_of_its_item(ex: Executor) -> None:
    @step
    async def users(names: list[str]) -> list[dict[str, object]]:
        return [{"name": n, "age": 30 + i} for i, n in enumerate(names)]

    @step
    async def greet(user: dict[str, object]) -> str:
        return f"hello {user['name']}"

    @pipeline
    def p(names: list[str]) -> object:
        return greet.map(users(names), map_key="name")

    run = await ex.submit(p, names=["alice", "bob"])
    assert await run.result() == ["hello alice", "hello bob"]
    keys = [s.key for s in await ex.get_steps(run.run_id)]
    assert keys == ["users", "greet", "greet[alice]", "greet[bob]"]
    run = await ex.submit(p, names=["alice", "alice"])
    try:
        await run.result()
    except RunFailed as exc:
        assert "two items have 'name' 'alice': keys must be unique" in str(exc)
    else:
        raise AssertionError("duplicate keys should fail the map")
