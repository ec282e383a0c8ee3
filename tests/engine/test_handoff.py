"""The embedded worker hands its completions to the coordinator in the process, as they
are (no encoding, reply queue or decoding): the run, its event log and its semantics are
those of a completion sent through the reply queue, and whatever must stay ordered with
other replies, or might not fit in a message, still goes through the queue."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from aexec import pipeline, step
from aexec.codec import DEFAULT_MAX_BODY as MAX_BODY
from aexec.config import Settings
from aexec.coordinator import Coordinator
from aexec.events import EventKind
from aexec.executor import Executor
from aexec.inbox import Handed
from aexec.messages import Completion
from aexec.types import StepStatus
from aexec.worker import Worker, _fits


@step
async def add(a: int, b: int) -> int:
    return a + b


@step
async def total(values: list[int]) -> int:
    return sum(values)


@pipeline
def fan_in(n: int = 10) -> object:
    return total([add.alias(f"a{i}")(i, i) for i in range(n)])


def _parts(ex: Executor) -> tuple[Worker, Coordinator]:
    worker, coordinator = ex.worker, ex.coordinator
    assert worker is not None and coordinator is not None
    return worker, coordinator


async def test_successful_completions_are_handed_over_and_logged_as_over_a_queue(
    ex: Executor,
) -> None:
    run = await ex.submit(fan_in)
    assert await run.result() == 90
    worker, _ = _parts(ex)
    assert worker.handed == 11
    assert worker.outbox.completions == 0
    events = await ex.get_events(run.run_id)
    for key in [f"a{i}" for i in range(10)] + ["total"]:
        kinds = [e.kind for e in events if e.step == key]
        assert kinds == [EventKind.STEP_DISPATCHED, EventKind.STEP_SUCCEEDED], key
    steps = await ex.get_steps(run.run_id)
    assert all(s.status == StepStatus.SUCCEEDED and s.attempts == 1 for s in steps)


async def test_a_step_that_reported_output_sends_its_completion_after_it_through_the_queue(
    ex: Executor,
) -> None:
    @step
    async def talk() -> int:
        print("last words")
        return 1

    @pipeline
    def p() -> object:
        return add(talk(), 1)

    run = await ex.submit(p)
    assert await run.result() == 2
    worker, _ = _parts(ex)
    assert (worker.handed, worker.outbox.completions) == (1, 1)  # add handed, talk queued
    kinds = [e.kind for e in await ex.get_events(run.run_id) if e.step == "talk"]
    assert kinds.index(EventKind.STEP_OUTPUT) < kinds.index(EventKind.STEP_SUCCEEDED)


async def test_failures_go_through_the_queue_and_are_retried(ex: Executor) -> None:
    calls: list[int] = []

    @step(retries=2, retry_backoff=0.0)
    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not yet")
        return "ok"

    @pipeline
    def p() -> object:
        return flaky()

    run = await ex.submit(p)
    assert await run.result() == "ok"
    worker, _ = _parts(ex)
    assert (worker.handed, worker.outbox.completions) == (1, 2)
    (record,) = await ex.get_steps(run.run_id)
    assert record.attempts == 3 and record.status == StepStatus.SUCCEEDED


async def test_a_completion_handed_over_twice_is_recorded_once(ex: Executor) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    @step
    async def slow() -> int:
        started.set()
        await release.wait()
        return 7

    @pipeline
    def p() -> object:
        return add(slow(), 1)

    run = await ex.submit(p)
    await asyncio.wait_for(started.wait(), 5)
    worker, coordinator = _parts(ex)
    now = time.time()
    early = Completion(run.run_id, "slow", 1, b"\x05", None, worker.name, now, now)
    assert coordinator.hand_over(coordinator.reply_queue, early)
    assert coordinator.hand_over(coordinator.reply_queue, early)  # a duplicate
    release.set()  # and the attempt's own completion, a third copy, comes after
    assert await run.result() == 6  # the first copy's output (5) was recorded, once
    slow_events = [e for e in await ex.get_events(run.run_id) if e.step == "slow"]
    assert [e.kind for e in slow_events].count(EventKind.STEP_SUCCEEDED) == 1


async def test_the_coordinator_takes_only_completions_of_runs_it_drives_on_its_queue(
    ex: Executor,
) -> None:
    run = await ex.submit(fan_in, n=1)
    assert await run.result() == 0
    worker, coordinator = _parts(ex)
    now = time.time()
    ended = Completion(run.run_id, "a0", 1, b"\x00", None, worker.name, now, now)
    assert not coordinator.hand_over(coordinator.reply_queue, ended)  # its run has ended
    unknown = Completion("no-such-run", "a0", 1, b"\x00", None, worker.name, now, now)
    assert not coordinator.hand_over(coordinator.reply_queue, unknown)


async def test_a_handed_completion_whose_run_ended_meanwhile_goes_through_the_queue(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = Settings(home=str(tmp_path))  # the embedded default: SQLite, kept
    async with Executor(settings) as ex:
        run = await ex.submit(fan_in, n=1)
        assert await run.result() == 0
        worker, coordinator = _parts(ex)
        transport = coordinator.transport
        before = await ex.get_events(run.run_id)
        published: list[tuple[str, bytes]] = []
        sent = asyncio.Event()
        publish = transport.publish

        async def spy(queue: str, body: bytes, *, priority: int = 0) -> None:
            published.append((queue, body))
            sent.set()
            await publish(queue, body, priority=priority)

        monkeypatch.setattr(transport, "publish", spy)
        # Handed over while its run was driven, taken by a pass after the run ended: the
        # scheduler publishes it to the reply queue, where a reply about a finished run is
        # settled as any stray one (acked, not dead-lettered, nothing recorded).
        now = time.time()
        late = Completion(run.run_id, "a0", 1, b"\x00", None, worker.name, now, now)
        coordinator._inbox.post(Handed(late))
        await asyncio.wait_for(sent.wait(), 5)
        assert published == [(coordinator.reply_queue, late.encode())]
    # Leaving the executor waited for the stray to be settled: acked, not dead-lettered,
    # and nothing recorded (the store is read again by a new executor on the same home).
    assert await transport.dead_letters() == []
    async with Executor(settings) as again:
        assert await again.get_events(run.run_id) == before


async def test_only_completions_that_surely_fit_in_a_message_are_handed_over() -> None:
    now = time.time()
    for size in (0, 1024, MAX_BODY - 256, MAX_BODY - 64, MAX_BODY):
        completion = Completion("r", "k", 1, b"x" * size, None, "w", now, now, "i")
        if _fits(completion):
            assert len(completion.encode()) <= MAX_BODY
        else:
            assert size > MAX_BODY - 256
    assert _fits(Completion("r", "k", 1, b"x" * (MAX_BODY - 256), None, "w", now, now, "i"))
