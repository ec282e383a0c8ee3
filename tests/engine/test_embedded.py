"""The embedded executor: coordinator and in-process worker on one loop, memory adapters."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
import time
from pathlib import Path

import pytest

import aexec
import aexec.testing
from aexec import pipeline, remote_step, step
from aexec.errors import AexecError, PlanError, RunFailed
from aexec.events import EventKind
from aexec.executor import Executor
from aexec.types import RunStatus, StepStatus


@step
async def add(a: int, b: int) -> int:
    return a + b


@step
async def total(values: list[int]) -> int:
    return sum(values)


@step
def sync_add(a: int, b: int) -> int:
    return a + b


@pipeline
def fan_in(n: int = 100) -> object:
    return total([add.alias(f"a{i}")(i, i) for i in range(n)])


async def test_fan_in_returns_the_sum_of_its_inputs(ex: Executor) -> None:
    run = await ex.submit(fan_in)
    assert await run.result() == 9900
    steps = await ex.get_steps(run.run_id)
    assert len(steps) == 101
    assert all(s.status == StepStatus.SUCCEEDED and s.attempts == 1 for s in steps)


async def test_parameters_shape_the_plan_and_the_result(ex: Executor) -> None:
    run = await ex.submit(fan_in, n=10)
    assert len(run.plan) == 11
    assert await run.result() == 90


async def test_chain_of_chords_runs_every_step_once_in_dependency_order(ex: Executor) -> None:
    order: list[str] = []

    @step
    async def noop(*args: object) -> bool:
        order.append(aexec.current().step_key)
        return True

    @step
    async def join(results: list[bool]) -> bool:
        order.append(aexec.current().step_key)
        return all(results)

    @pipeline
    def chords(n: int = 20) -> object:
        prev = noop.alias("start")()
        for i in range(n):
            prev = join.alias(f"j{i}")([noop.alias(f"c{i}_{j}")(prev) for j in range(10)])
        return noop.alias("end")(prev)

    run = await ex.submit(chords)
    assert await run.result() is True
    assert len(order) == len(set(order)) == 2 + 11 * 20
    position = {key: i for i, key in enumerate(order)}
    for step_ in run.plan.steps:
        for dep in step_.deps:
            assert position[run.plan.steps[dep].key] < position[step_.key]


async def test_sync_steps_run_in_threads_and_async_steps_concurrently(ex: Executor) -> None:
    barrier = asyncio.Barrier(10)
    loop_thread = threading.get_ident()
    threads: list[int] = []

    @step
    async def meet(i: int) -> int:
        await asyncio.wait_for(barrier.wait(), 5.0)  # deadlocks unless all 10 run at once
        return i

    @step
    def in_thread(xs: list[int]) -> int:
        threads.append(threading.get_ident())
        return sum(xs)

    @pipeline
    def concurrent() -> object:
        return in_thread([meet.alias(f"m{i}")(i) for i in range(10)])

    assert await (await ex.submit(concurrent)).result() == 45
    assert threads and threads[0] != loop_thread


async def test_async_only_pipelines_start_no_thread(ex: Executor) -> None:
    # Threads of earlier tests' pools may still be ending: count only threads that start.
    before = set(threading.enumerate())
    assert await (await ex.submit(fan_in, n=5)).result() == 20
    assert set(threading.enumerate()) - before == set()


async def test_a_flaky_step_is_retried_with_backoff_until_it_succeeds(ex: Executor) -> None:
    calls: list[float] = []

    @step(retries=3, retry_backoff=0.02)
    async def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError(f"attempt {len(calls)} failed")
        return "ok"

    @pipeline
    def p() -> object:
        return flaky()

    run = await ex.submit(p)
    assert await run.result() == "ok"
    assert len(calls) == 3
    assert calls[2] - calls[1] >= 0.02  # second wait is backoff·2 with jitter ≥ half of it
    (record,) = await ex.get_steps(run.run_id)
    assert record.attempts == 3 and record.status == StepStatus.SUCCEEDED
    kinds = [e.kind for e in await ex.get_events(run.run_id) if e.step == "flaky"]
    assert kinds.count(EventKind.STEP_RETRYING) == 2
    assert kinds.count(EventKind.STEP_DISPATCHED) == 3


async def test_a_step_that_exhausts_its_retries_fails_the_run_with_its_error(ex: Executor) -> None:
    @step(retries=1, retry_backoff=0.0)
    async def broken() -> None:
        raise ValueError("boom")

    @pipeline
    def p() -> object:
        return broken()

    run = await ex.submit(p)
    with pytest.raises(RunFailed) as info:
        await run.result()
    assert info.value.errors["broken"].type == "ValueError"
    assert info.value.errors["broken"].message == "boom"
    assert "ValueError: boom" in info.value.errors["broken"].traceback
    (record,) = await ex.get_steps(run.run_id)
    assert record.attempts == 2 and record.status == StepStatus.FAILED


async def test_a_failure_skips_its_dependents_and_independent_branches_finish(ex: Executor) -> None:
    @step
    async def fail() -> int:
        raise RuntimeError("no")

    @pipeline
    def p() -> object:
        bad = fail()
        downstream = add.alias("downstream")(bad, 1)
        add.alias("further")(downstream, 1)
        return add.alias("independent")(1, 2)

    run = await ex.submit(p)
    record = await run.wait()
    assert record.status == RunStatus.FAILED
    status = {s.key: s.status for s in await ex.get_steps(run.run_id)}
    assert status == {
        "fail": StepStatus.FAILED,
        "downstream": StepStatus.SKIPPED,
        "further": StepStatus.SKIPPED,
        "independent": StepStatus.SUCCEEDED,
    }


async def test_async_and_sync_steps_time_out(ex: Executor) -> None:
    release = threading.Event()

    @step(timeout=0.05)
    async def slow() -> None:
        await asyncio.sleep(30)

    @step(timeout=0.05)
    def slow_sync() -> None:
        release.wait(5)

    @pipeline
    def p() -> None:
        slow()
        slow_sync()

    run = await ex.submit(p)
    with pytest.raises(RunFailed) as info:
        await run.result()
    release.set()
    assert set(info.value.errors) == {"slow", "slow_sync"}
    assert all(e.type == "StepTimeoutError" for e in info.value.errors.values())


async def test_values_cross_steps_through_the_codec(ex: Executor) -> None:
    when = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)

    @step
    async def make() -> dict[str, object]:
        return {"when": when, "tags": {"a", "b"}, "blob": b"\x00\xff", "pair": (1, 2)}

    @step
    async def check(value: dict[str, object]) -> list[object]:
        return [value["when"] == when, value["tags"] == {"a", "b"}, value["blob"], value["pair"]]

    @pipeline
    def p() -> object:
        return check(make())

    assert await (await ex.submit(p)).result() == [True, True, b"\x00\xff", [1, 2]]


async def test_an_unencodable_return_value_fails_the_step_not_the_worker(ex: Executor) -> None:
    @step
    async def bad() -> object:
        return object()

    @pipeline
    def p() -> object:
        return bad()

    with pytest.raises(RunFailed) as info:
        await (await ex.submit(p)).result()
    assert info.value.errors["bad"].type == "CodecError"
    assert "cannot be encoded" in info.value.errors["bad"].message
    assert await (await ex.submit(fan_in, n=3)).result() == 6  # the worker still serves


async def test_large_outputs_travel_through_the_object_store() -> None:
    @step
    async def big() -> bytes:
        return b"x" * 100_000

    @step
    async def size(data: bytes) -> int:
        return len(data)

    @pipeline
    def p() -> object:
        data = big()
        return {"size": size(data), "data": data}

    async with aexec.testing.executor(inline_threshold=1024) as ex:
        run = await ex.submit(p)
        result = await run.result()
        assert result["size"] == 100_000 and result["data"] == b"x" * 100_000
        steps = {s.key: s for s in await ex.get_steps(run.run_id)}
        stored = steps["big"].output
        assert stored is not None and len(stored) < 200  # a reference, not the value
        assert len(await ex.objects.get(f"outputs/{run.run_id}/big/1")) > 100_000


async def test_events_stream_the_whole_run_in_order(ex: Executor) -> None:
    run = await ex.submit(fan_in, n=3)
    events = [e async for e in run.events()]
    kinds = [e.kind for e in events]
    assert kinds[:2] == [EventKind.RUN_SUBMITTED, EventKind.RUN_STARTED]
    assert events[0].data == {"priority": 0, "steps": 4}
    assert kinds[-1] is EventKind.RUN_SUCCEEDED
    assert kinds.count(EventKind.STEP_SUCCEEDED) == 4
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    again = [e.kind async for e in run.events()]  # after the end: the history
    assert again == kinds


async def test_steps_report_progress_through_the_context(ex: Executor) -> None:
    @step
    async def long() -> str:
        ctx = aexec.current()
        ctx.progress(0.5, f"half of {ctx.step_key} attempt {ctx.attempt}")
        await asyncio.sleep(0.2)  # longer than a heartbeat interval: reported running
        return ctx.run_id

    @pipeline
    def p() -> object:
        return long()

    run = await ex.submit(p)
    assert await run.result() == run.run_id
    events = await ex.get_events(run.run_id)
    progress = [e for e in events if e.kind is EventKind.STEP_PROGRESS]
    assert progress and progress[0].data["fraction"] == 0.5
    assert progress[0].data["message"] == "half of long attempt 1"
    assert any(e.kind is EventKind.STEP_STARTED for e in events)


async def test_current_outside_a_step_is_an_error() -> None:
    with pytest.raises(AexecError):
        aexec.current()


async def test_priorities_reorder_queued_work() -> None:
    order: list[int] = []

    @step
    async def work(p: int) -> None:
        order.append(p)

    @pipeline
    def p() -> None:
        for i in range(6):
            step(priority=i, name="work")(work.fn).alias(f"w{i}")(i)  # type: ignore[arg-type]

    async with aexec.testing.executor(concurrency=1) as ex:
        await (await ex.submit(p)).wait()
    assert order[1:] == sorted(order[1:], reverse=True)


async def test_remote_steps_cannot_run_embedded(ex: Executor) -> None:
    reconstruct = remote_step("reconstruct", queue="elsewhere")

    @pipeline
    def p() -> object:
        return reconstruct(url="x")

    with pytest.raises(PlanError, match="reconstruct"):
        await ex.submit(p)


async def test_remote_steps_run_embedded_with_an_implementation() -> None:
    reconstruct = remote_step("reconstruct", queue="elsewhere")

    @step(name="reconstruct", queue="elsewhere")
    async def implementation(url: str) -> str:
        return f"scene of {url}"

    @pipeline
    def p() -> object:
        return reconstruct(url="x")

    async with aexec.testing.executor(steps=[implementation]) as ex:
        assert await (await ex.submit(p)).result() == "scene of x"


async def test_a_cancelled_run_ends_cancelled(ex: Executor) -> None:
    started = asyncio.Event()

    @step
    async def wait_forever() -> None:
        started.set()
        await asyncio.sleep(30)

    @pipeline
    def p() -> object:
        return add(wait_forever(), 1)

    run = await ex.submit(p)
    await asyncio.wait_for(started.wait(), 5)
    await run.cancel()
    record = await run.wait()
    assert record.status == RunStatus.CANCELLED
    status = {s.key: s.status for s in await ex.get_steps(run.run_id)}
    assert status == {"wait_forever": StepStatus.CANCELLED, "add": StepStatus.CANCELLED}


async def test_many_runs_share_one_coordinator(ex: Executor) -> None:
    runs = [await ex.submit(fan_in, n=i) for i in range(1, 30)]
    results = await asyncio.gather(*(r.result() for r in runs))
    assert results == [i * (i - 1) for i in range(1, 30)]


async def test_a_missing_input_object_is_a_clear_step_error() -> None:
    async with aexec.testing.executor(inline_threshold=1024) as ex:

        @step
        async def big() -> bytes:
            return b"x" * 10_000

        @step
        async def lose_it(_: bytes) -> None:
            await ex.objects.delete(f"outputs/{aexec.current().run_id}/big/1")

        @step
        async def consume(data: bytes, _: None) -> int:
            return len(data)

        @pipeline
        def p() -> object:
            data = big()
            return consume(data, lose_it(data))

        run = await ex.submit(p)
        with pytest.raises(RunFailed) as info:
            await run.result()
    error = info.value.errors["consume"]
    assert error.type == "ObjectNotFoundError"
    assert "cannot load an input" in error.message and "/big/1" in error.message


async def test_sync_steps_can_run_in_a_process_pool(tmp_path: Path) -> None:
    module = tmp_path / "cpu_steps.py"
    module.write_text(
        "import os\n"
        "from aexec import step\n"
        "@step\n"
        "def square(x: int) -> list[int]:\n"
        "    return [x * x, os.getpid()]\n"
    )
    from aexec.coordinator import Coordinator
    from aexec.loader import load_file
    from aexec.objects.memory import MemoryObjectStore
    from aexec.store.memory import MemoryStore
    from aexec.transport.memory import MemoryTransport
    from aexec.worker import Worker, WorkerConfig

    square = load_file(module).square

    @pipeline
    def squares() -> object:
        return [square.alias(f"s{i}")(i) for i in range(4)]

    compiled = squares.compile()
    transport, store = MemoryTransport(), MemoryStore()
    await transport.open()
    await store.open()
    config = WorkerConfig(pool="process", process_pool_size=2, modules=(str(module),))
    async with (
        Coordinator(transport, store) as coordinator,
        Worker(transport, MemoryObjectStore(), compiled.steps, config) as worker,
    ):
        await worker.serve("default")
        run = await coordinator.submit(compiled.plan)
        assert await asyncio.wait_for(run.done, 60) is RunStatus.SUCCEEDED
        record = await store.get_run(run.run_id)
    assert record is not None and record.result is not None
    from aexec import codec

    result = codec.decode(record.result)
    assert [r[0] for r in result] == [0, 1, 4, 9]
    assert all(pid != os.getpid() for _, pid in result)  # ran in child processes
    await store.close()
    await transport.close()


async def test_a_pipeline_of_celery_tasks_without_a_celery_broker_is_refused_with_the_fix(
    tmp_path: Path,
) -> None:
    from aexec.celery import celery_step
    from aexec.errors import ConfigError

    task = celery_step("proj.tasks.add")

    @pipeline
    def celery_sum() -> object:
        return task(1, 2)

    async with aexec.testing.executor() as ex:
        with pytest.raises(ConfigError, match="has celery steps, which this coordinator cannot"):
            await ex.submit(celery_sum)
        assert await ex.list_runs() == []


async def test_a_run_keeps_its_tags_and_bad_tags_are_refused_before_it_starts(
    ex: Executor,
) -> None:
    run = await ex.submit(fan_in, n=2, tags={"team": "data", "ticket": "AB-12"})
    await run.wait()
    record = await ex.get_run(run.run_id)
    assert record is not None and record.tags == {"team": "data", "ticket": "AB-12"}
    assert [r.run_id for r in await ex.list_runs(tag=("ticket", "AB-12"))] == [run.run_id]
    for bad in ({"": "x"}, {"k": 3}, {"a=b": "c"}):
        with pytest.raises(PlanError, match="tag"):
            await ex.submit(fan_in, tags=bad)
    assert len(await ex.list_runs()) == 1
