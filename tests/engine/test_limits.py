"""Concurrency limits on the embedded executor (memory adapters): ``concurrency=``,
named ``uses=`` limits from the configuration, and per-key limits served round-robin."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aexec
import aexec.testing
from aexec import pipeline, step
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.events import EventKind
from aexec.executor import Executor
from aexec.objects.memory import MemoryObjectStore
from aexec.store.memory import MemoryStore
from aexec.testing import wait_for_event
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus, StepStatus
from aexec.waiting import waiting_for
from aexec.worker import Worker, WorkerConfig


class Gauge:
    """How many steps run at once (at most, and now), overall and per key."""

    def __init__(self) -> None:
        self.now: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.order: list[str] = []

    async def hold(self, key: str, seconds: float = 0.02) -> None:
        self.now[key] += 1
        self.now["*"] += 1
        self.peak[key] = max(self.peak[key], self.now[key])
        self.peak["*"] = max(self.peak["*"], self.now["*"])
        self.order.append(key)
        try:
            await asyncio.sleep(seconds)  # the step's work
        finally:
            self.now[key] -= 1
            self.now["*"] -= 1


async def test_concurrency_caps_running_attempts_of_a_step_across_runs() -> None:
    gauge = Gauge()

    @step(concurrency=3)
    async def capped(i: int) -> int:
        await gauge.hold("capped")
        return i

    @pipeline
    def many() -> object:
        return [capped.alias(f"c{i}")(i) for i in range(12)]

    async with aexec.testing.executor(steps=[capped]) as ex:
        runs = [await ex.submit(many) for _ in range(3)]
        results = [await run.result() for run in runs]
    assert results == [list(range(12))] * 3
    assert gauge.peak["capped"] == 3


async def test_a_named_limit_caps_every_step_that_uses_it_together() -> None:
    gauge = Gauge()

    @step(uses="gpu")
    async def render(i: int) -> int:
        await gauge.hold("gpu")
        return i

    @step(uses="gpu")
    async def train(i: int) -> int:
        await gauge.hold("gpu")
        return -i

    @pipeline
    def both() -> object:
        return [render.alias(f"r{i}")(i) for i in range(6)] + [
            train.alias(f"t{i}")(i) for i in range(6)
        ]

    async with aexec.testing.executor(steps=[render, train], limits={"gpu": 2}) as ex:
        run = await ex.submit(both)
        assert len(await run.result()) == 12
    assert gauge.peak["gpu"] == 2


async def test_a_named_limit_missing_from_the_configuration_does_not_limit() -> None:
    gauge = Gauge()

    @step(uses="nowhere")
    async def free(i: int) -> int:
        await gauge.hold("free", 0.05)
        return i

    @pipeline
    def spread() -> object:
        return [free.alias(f"f{i}")(i) for i in range(8)]

    async with aexec.testing.executor(steps=[free]) as ex:
        await (await ex.submit(spread)).result()
    assert gauge.peak["free"] == 8


async def test_a_per_key_limit_from_a_step_argument_caps_each_key_and_serves_keys_in_turn() -> None:
    gauge = Gauge()

    @step(uses="pool", limit_key="tenant")
    async def work(tenant: str, i: int) -> int:
        await gauge.hold(tenant, 0.01)
        return i

    @pipeline
    def tenants() -> object:
        # "big" has 40 steps before the small tenants' 2 each, all ready at once.
        big = [work.alias(f"big{i}")("big", i) for i in range(40)]
        small = [work.alias(f"{t}{i}")(t, i) for t in ("a", "b", "c") for i in range(2)]
        return big + small

    async with aexec.testing.executor(steps=[work], limits={"pool": 2}) as ex:
        await (await ex.submit(tenants)).result()
    assert gauge.peak["*"] == 2
    # Round-robin by key: every small tenant is done long before "big" is.
    last_small = max(i for i, key in enumerate(gauge.order) if key != "big")
    assert last_small < 12, gauge.order


async def test_a_per_key_concurrency_takes_its_key_from_a_pipeline_parameter() -> None:
    gauge = Gauge()
    tenant_of: dict[str, str] = {}

    @step(concurrency=2, limit_key="tenant")
    async def job(i: int) -> int:
        await gauge.hold(tenant_of[aexec.current().run_id])
        return i

    @pipeline
    def per_tenant(tenant: str) -> object:
        return [job.alias(f"j{i}")(i) for i in range(6)]

    async with aexec.testing.executor(steps=[job]) as ex:
        runs = []
        for tenant in ("x", "y", "x"):
            run = await ex.submit(per_tenant, tenant=tenant)
            tenant_of[run.run_id] = tenant
            runs.append(run)
        for run in runs:
            assert await run.result() == list(range(6))
    # Two runs of tenant x share its 2 slots; y has 2 of its own.
    assert gauge.peak["x"] == 2
    assert gauge.peak["y"] == 2
    assert gauge.peak["*"] <= 4


async def test_a_per_key_limit_takes_its_key_from_an_upstream_output() -> None:
    seen: list[str] = []
    running: Counter[str] = Counter()
    peak: Counter[str] = Counter()

    @step
    async def who(i: int) -> str:
        return "even" if i % 2 == 0 else "odd"

    @step(concurrency=1, limit_key="tenant")
    async def serve(tenant: str, i: int) -> int:
        running[tenant] += 1
        peak[tenant] = max(peak[tenant], running[tenant])
        seen.append(tenant)
        await asyncio.sleep(0.01)
        running[tenant] -= 1
        return i

    @pipeline
    def keyed() -> object:
        return [serve.alias(f"s{i}")(who.alias(f"w{i}")(i), i) for i in range(8)]

    async with aexec.testing.executor(steps=[who, serve]) as ex:
        run = await ex.submit(keyed)
        assert await run.result() == list(range(8))
    assert peak == Counter({"even": 1, "odd": 1})
    assert sorted(seen) == ["even"] * 4 + ["odd"] * 4


async def test_a_waiting_step_stays_pending_in_the_coordinator_not_in_the_broker(
    ex: Executor,
) -> None:
    release = asyncio.Event()

    @step(concurrency=1)
    async def single(i: int) -> int:
        await release.wait()
        return i

    @pipeline
    def two() -> object:
        return [single.alias("first")(1), single.alias("second")(2)]

    run = await ex.submit(two)
    # Both were ready in the pass that started the run: "second" was held then.
    await aexec.testing.wait_for_event(run, EventKind.STEP_STARTED, step="first")
    steps = {s.key: s for s in await ex.get_steps(run.run_id)}
    assert steps["second"].status is StepStatus.PENDING  # not in the broker
    record = await ex.get_run(run.run_id)
    assert record is not None
    plan = await ex.store.get_plan(record.plan_digest)
    waits = waiting_for(record, list(steps.values()), plan)
    assert waits == {"second": "concurrency limit single (1)"}
    release.set()
    assert await run.result() == [1, 2]


async def test_cancelling_a_run_frees_its_slots_and_its_waiting_steps(ex: Executor) -> None:
    block = asyncio.Event()

    @step(concurrency=1)
    async def slow(i: int) -> int:
        await block.wait()
        return i

    @pipeline
    def queue_up() -> object:
        return [slow.alias(f"s{i}")(i) for i in range(3)]

    first = await ex.submit(queue_up)
    await aexec.testing.wait_for_event(first, EventKind.STEP_STARTED)
    second = await ex.submit(queue_up)
    await aexec.testing.wait_for_event(second, EventKind.RUN_STARTED)  # its steps held then
    await first.cancel()
    assert (await first.wait()).status is RunStatus.CANCELLED
    # The slot the cancelled run held goes to the next run; nothing of the first goes out.
    await aexec.testing.wait_for_event(second, EventKind.STEP_STARTED)
    block.set()
    assert await second.result() == [0, 1, 2]
    first_steps = await ex.get_steps(first.run_id)
    assert {s.status for s in first_steps} == {StepStatus.CANCELLED}


async def test_a_failed_attempt_frees_its_slot_for_its_retry_and_the_others() -> None:
    attempts: Counter[int] = Counter()

    @step(concurrency=1, retries=2, retry_backoff=0.01)
    async def flaky(i: int) -> int:
        attempts[i] += 1
        if attempts[i] == 1:
            raise RuntimeError("first attempt fails")
        return i

    @pipeline
    def flakes() -> object:
        return [flaky.alias(f"f{i}")(i) for i in range(4)]

    async with aexec.testing.executor(steps=[flaky]) as ex:
        assert await (await ex.submit(flakes)).result() == [0, 1, 2, 3]
    assert attempts == Counter({0: 2, 1: 2, 2: 2, 3: 2})


async def test_a_rate_limit_starts_a_burst_then_no_more_than_its_rate() -> None:
    started: list[float] = []

    @step(rate_limit="10/s")
    async def ping(i: int) -> int:
        started.append(time.monotonic())
        return i

    @pipeline
    def pings() -> object:
        return [ping.alias(f"p{i}")(i) for i in range(16)]

    async with aexec.testing.executor(steps=[ping]) as ex:
        run = await ex.submit(pings)
        assert await run.result() == list(range(16))
    started.sort()
    # A bucket of 10 a second with a burst of 10: in any window of T seconds at most
    # 10 + 10T start, so 12 starts span at least 0.1 s (and 16, 0.5 s).
    for k in range(len(started) - 11):
        assert started[k + 11] - started[k] >= 0.1 - 0.02, (k, started)
    assert started[15] - started[0] >= 0.5 - 0.02, started


async def test_after_a_takeover_running_steps_keep_their_slots_and_queued_runs_wait_again() -> None:
    gate = asyncio.Event()
    running: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    started = asyncio.Event()

    @step(concurrency=2)
    async def capped(i: int) -> int:
        running["capped"] += 1
        peak["capped"] = max(peak["capped"], running["capped"])
        started.set()
        try:
            await gate.wait()
        finally:
            running["capped"] -= 1
        return i

    @pipeline
    def many() -> object:
        return [capped.alias(f"c{i}")(i) for i in range(6)]

    compiled = many.compile()
    transport, store = MemoryTransport(), MemoryStore()
    await transport.open()
    await store.open()
    fast = {"lease": 0.3, "worker_timeout": 2.0, "max_concurrent_runs": 1}
    config = WorkerConfig(name="w", heartbeat_interval=0.05, ack_after=0.1)
    async with (
        asyncio.timeout(20),
        Worker(transport, MemoryObjectStore(), compiled.steps, config) as w,
    ):
        await w.serve("default")
        doomed = Coordinator(transport, store, CoordinatorConfig(id="doomed", **fast))
        await doomed.__aenter__()
        first = await doomed.submit(compiled.plan)
        second = await doomed.submit(compiled.plan)  # queued behind the first
        await wait_for_event(store.follow(second.run_id), EventKind.RUN_QUEUED)
        await started.wait()
        await wait_for_event(store.follow(first.run_id), EventKind.STEP_STARTED)
        await doomed.abort()  # as SIGKILL would
        heir = Coordinator(transport, store, CoordinatorConfig(id="heir", adopt=True, **fast))
        async with heir:
            await wait_for_event(store.follow(first.run_id), EventKind.RUN_RESUMED)
            gate.set()
            for run in (first, second):
                await wait_for_event(store.follow(run.run_id), EventKind.RUN_SUCCEEDED)
    await transport.close()
    assert peak["capped"] == 2  # never more than the cap, before or after the takeover
    first_end = (await store.get_run(first.run_id)).finished_at  # type: ignore[union-attr]
    second_start = (await store.get_run(second.run_id)).started_at  # type: ignore[union-attr]
    assert first_end is not None and second_start is not None
    assert second_start >= first_end  # admitted again only once the first ended
