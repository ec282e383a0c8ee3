"""Commits deferred to the pass that needs them (issue 15): a completion that makes no step
ready is recorded with the next pass that dispatches (before its steps go out) or within
``commit_delay``; its reply stays unacked until then, so a coordinator that dies
meanwhile loses nothing — the heir gets the replies back and records each once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

import aexec
from aexec import messages, pipeline, step
from aexec.batch import ActiveRun, Batch
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.events import Event, EventKind
from aexec.objects.memory import MemoryObjectStore
from aexec.store.memory import MemoryStore
from aexec.testing import wait_for_event
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus, StepStatus
from aexec.worker import Worker, WorkerConfig

WAIT = 10.0  # bound on every wait for something that should happen
WIDTH = 4
NEVER = 60.0  # a commit delay no test reaches
# Completions one by one (no coalescing), so that each arrives in a pass of its own.
ALONE = WorkerConfig(name="w", coalesce=0, heartbeat_interval=0.05)


class Confirming(MemoryStore):
    """Tells when it has recorded the broker's confirms of dispatches (after which, in
    these tests, only completions are left to commit)."""

    def __init__(self) -> None:
        super().__init__()
        self.confirmed = asyncio.Event()

    async def append(self, events: Sequence[Event], **options: Any) -> None:
        confirmed = options.get("confirmed", ())
        await super().append(events, **options)
        if confirmed:
            self.confirmed.set()


@pytest.fixture
async def store() -> AsyncIterator[Confirming]:
    s = Confirming()
    await s.open()
    yield s
    await s.close()


class Checking(MemoryTransport):
    """The memory broker; before a step message of ``total`` goes out, notes which of its
    inputs' completions the store holds."""

    def __init__(self, store: Confirming) -> None:
        super().__init__()
        self.store = store
        self.recorded_at_dispatch: list[set[str]] = []

    async def publish_many(self, batch: Sequence[tuple[str, Any, int]]) -> None:
        for _, body, _ in batch:  # handed over as objects, or encoded
            msg = body if isinstance(body, messages.StepMessage) else messages.decode(body)
            if isinstance(msg, messages.StepMessage) and msg.step_key == "total":
                self.recorded_at_dispatch.append(await recorded_parts(self.store, msg.run_id))
        await super().publish_many(batch)


def staggered(gates: list[asyncio.Event], runs: Counter[str]) -> aexec.Pipeline:
    """``WIDTH`` parts, each released by its own gate, then their sum."""

    @step
    async def part(i: int) -> int:
        runs[f"part{i}"] += 1
        await gates[i].wait()
        return i

    @step
    async def total(values: list[int]) -> int:
        runs["total"] += 1
        return sum(values)

    @pipeline
    def p() -> object:
        return total([part.alias(f"part{i}")(i) for i in range(WIDTH)])

    return p


async def recorded_parts(store: MemoryStore, run_id: str) -> set[str]:
    events = await store.get_events(run_id)
    return {
        e.step or ""
        for e in events
        if e.kind is EventKind.STEP_SUCCEEDED and (e.step or "").startswith("part")
    }


class Observed(Coordinator):
    """A coordinator whose scheduler passes can be waited for (:meth:`until`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.passed = asyncio.Condition()

    async def _schedule_once(self, batch: Batch) -> None:
        await super()._schedule_once(batch)
        async with self.passed:
            self.passed.notify_all()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition`` holds after a scheduler pass."""
        async with asyncio.timeout(WAIT), self.passed:
            await self.passed.wait_for(condition)


def applied(run: ActiveRun, key: str) -> Callable[[], bool]:
    """True once the coordinator applied the completion of step ``key``."""
    index = run.plan.index[key]
    return lambda: run.state.status[index] is StepStatus.SUCCEEDED


async def test_completions_that_make_nothing_ready_are_committed_before_their_dependent_goes_out(
    store: Confirming,
) -> None:
    gates, runs = [asyncio.Event() for _ in range(WIDTH)], Counter[str]()
    compiled = staggered(gates, runs).compile()
    transport = Checking(store)
    await transport.open()
    config = CoordinatorConfig(commit_delay=NEVER)
    async with (
        Observed(transport, store, config) as coordinator,
        Worker(transport, MemoryObjectStore(), compiled.steps, ALONE) as worker,
    ):
        await worker.serve("default")
        run = await coordinator.submit(compiled.plan)
        await asyncio.wait_for(store.confirmed.wait(), WAIT)  # the dispatches are recorded
        for i in range(WIDTH - 1):  # each completion alone, in a pass that dispatches nothing
            gates[i].set()
            await coordinator.until(applied(run, f"part{i}"))
        assert await recorded_parts(store, run.run_id) == set()  # held, not committed yet
        gates[-1].set()  # the last one makes the sum ready: everything is committed first
        assert await asyncio.wait_for(asyncio.shield(run.done), WAIT) is RunStatus.SUCCEEDED
    every_part = {f"part{i}" for i in range(WIDTH)}
    assert transport.recorded_at_dispatch == [every_part]
    assert set(runs.values()) == {1}
    assert await recorded_parts(store, run.run_id) == every_part
    await transport.close()


async def test_held_completions_are_committed_within_the_commit_delay(store: Confirming) -> None:
    gates, runs = [asyncio.Event() for _ in range(WIDTH)], Counter[str]()
    compiled = staggered(gates, runs).compile()
    transport = MemoryTransport()
    await transport.open()
    async with (
        Observed(transport, store, CoordinatorConfig(commit_delay=0.05)) as coordinator,
        Worker(transport, MemoryObjectStore(), compiled.steps, ALONE) as worker,
    ):
        await worker.serve("default")
        run = await coordinator.submit(compiled.plan)
        gates[0].set()  # the others keep running: nothing is dispatched for a while
        async with asyncio.timeout(WAIT):
            await wait_for_event(store.follow(run.run_id), EventKind.STEP_SUCCEEDED, step="part0")
        assert await recorded_parts(store, run.run_id) == {"part0"}
        assert run.state.status[run.plan.index["total"]] is StepStatus.PENDING
        for gate in gates:
            gate.set()
        assert await asyncio.wait_for(asyncio.shield(run.done), WAIT) is RunStatus.SUCCEEDED
    await transport.close()


async def test_with_no_commit_delay_every_completion_is_committed_at_once(
    store: Confirming,
) -> None:
    gates, runs = [asyncio.Event() for _ in range(WIDTH)], Counter[str]()
    compiled = staggered(gates, runs).compile()
    transport = MemoryTransport()
    await transport.open()
    async with (
        Observed(transport, store, CoordinatorConfig(commit_delay=0)) as coordinator,
        Worker(transport, MemoryObjectStore(), compiled.steps, ALONE) as worker,
    ):
        await worker.serve("default")
        run = await coordinator.submit(compiled.plan)
        gates[0].set()
        await coordinator.until(applied(run, "part0"))
        # Committed in the pass that applied it, before the next pass can run.
        assert await recorded_parts(store, run.run_id) == {"part0"}
        for gate in gates:
            gate.set()
        assert await asyncio.wait_for(asyncio.shield(run.done), WAIT) is RunStatus.SUCCEEDED
    await transport.close()


async def test_a_coordinator_dying_with_completions_held_loses_none_of_them(
    store: Confirming,
) -> None:
    gates, runs = [asyncio.Event() for _ in range(WIDTH)], Counter[str]()
    compiled = staggered(gates, runs).compile()
    transport = MemoryTransport()
    await transport.open()
    fast: dict[str, float] = {"lease": 0.3, "worker_timeout": 2.0}
    async with Worker(transport, MemoryObjectStore(), compiled.steps, ALONE) as worker:
        await worker.serve("default")
        config = CoordinatorConfig(id="doomed", commit_delay=NEVER, **fast)
        doomed = Observed(transport, store, config)
        await doomed.__aenter__()
        run = await doomed.submit(compiled.plan)
        await asyncio.wait_for(store.confirmed.wait(), WAIT)  # the dispatches are recorded
        for i in range(WIDTH - 1):
            gates[i].set()
            await doomed.until(applied(run, f"part{i}"))
        assert await recorded_parts(store, run.run_id) == set()  # held, their replies unacked
        await doomed.abort()  # as SIGKILL would: the held events are gone, the replies not
        heir = CoordinatorConfig(id="heir", adopt=True, commit_delay=NEVER, **fast)
        async with Observed(transport, store, heir) as heir_coordinator:
            await heir_coordinator.until(lambda: run.run_id in heir_coordinator.runs)
            gates[-1].set()
            ended = heir_coordinator.runs[run.run_id].done
            assert await asyncio.wait_for(asyncio.shield(ended), WAIT) is RunStatus.SUCCEEDED
            record = await store.get_run(run.run_id)
    assert record is not None and record.status is RunStatus.SUCCEEDED
    assert record.owner == "heir"
    assert set(runs.values()) == {1}  # no part ran twice, the sum ran once
    events = await store.get_events(run.run_id)
    succeeded = Counter(e.step for e in events if e.kind is EventKind.STEP_SUCCEEDED)
    assert set(succeeded.values()) == {1} and len(succeeded) == WIDTH + 1  # each recorded once
    steps = {s.key: s for s in await store.get_steps(run.run_id)}
    assert all(s.attempts == 1 for s in steps.values())  # the held replies reached the heir
    await transport.close()


async def test_a_coordinator_handing_its_runs_over_commits_what_it_holds_first(
    store: Confirming,
) -> None:
    gates, runs = [asyncio.Event() for _ in range(WIDTH)], Counter[str]()
    compiled = staggered(gates, runs).compile()
    transport = MemoryTransport()
    await transport.open()
    fast: dict[str, float] = {"lease": 0.3, "worker_timeout": 2.0}
    async with Worker(transport, MemoryObjectStore(), compiled.steps, ALONE) as worker:
        await worker.serve("default")
        config = CoordinatorConfig(id="leaving", commit_delay=NEVER, **fast)
        async with Observed(transport, store, config) as leaving:
            run = await leaving.submit(compiled.plan)
            await asyncio.wait_for(store.confirmed.wait(), WAIT)  # the dispatches are recorded
            gates[0].set()
            await leaving.until(applied(run, "part0"))
            assert await recorded_parts(store, run.run_id) == set()  # held
            # A clean shutdown: the held completion is recorded before the lease is given
            # up (after, a coordinator quick to claim the run would fence it out).
            await leaving.release()
            assert await recorded_parts(store, run.run_id) == {"part0"}
        heir = CoordinatorConfig(id="heir", adopt=True, **fast)
        async with Observed(transport, store, heir) as heir_coordinator:
            await heir_coordinator.until(lambda: run.run_id in heir_coordinator.runs)
            for gate in gates:
                gate.set()
            ended = heir_coordinator.runs[run.run_id].done
            assert await asyncio.wait_for(asyncio.shield(ended), WAIT) is RunStatus.SUCCEEDED
    assert set(runs.values()) == {1}
    events = await store.get_events(run.run_id)
    succeeded = Counter(e.step for e in events if e.kind is EventKind.STEP_SUCCEEDED)
    assert set(succeeded.values()) == {1} and len(succeeded) == WIDTH + 1
    await transport.close()
