"""Celery tasks as aexec steps, against unchanged Celery worker processes on the real
RabbitMQ, results over the ``rpc://`` backend (and Redis, at the end)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import decimal
import json
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import pytest

import aexec
from aexec import codec, pipeline, step
from aexec.celery import celery_step
from aexec.celery.gateway import CeleryConfig, CeleryGateway
from aexec.celery.protocol import task_id
from aexec.config import Settings
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.events import EventKind
from aexec.executor import Executor
from aexec.objects.memory import MemoryObjectStore
from aexec.store.memory import MemoryStore
from aexec.testing import wait_for_event
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus
from tests.plugins.celery import CeleryProcess, CeleryWorkers

pytestmark = pytest.mark.rabbitmq

WAIT = 60.0


def executor(workers: CeleryWorkers, tmp_path: Path, **settings: Any) -> Executor:
    """An embedded aexec (its own native steps run in-process) driving ``workers``."""
    return Executor(
        Settings(
            home=str(tmp_path / "home"),
            celery_broker=workers.broker,
            celery_backend=workers.backend,
            queue_prefix=workers.prefix,
            **settings,
        )
    )


def tasks(workers: CeleryWorkers, **options: Any) -> dict[str, Any]:
    q = workers.queue
    return {
        name: celery_step(f"tests.celery.tasks.{name}", queue=q, **options)
        for name in ("add", "mul", "xsum", "echo", "fail", "flaky", "sleep", "noop")
    }


async def test_a_chain_of_celery_tasks_passes_results_along(
    celery_rpc: CeleryWorkers, tmp_path: Path
) -> None:
    t = tasks(celery_rpc)

    @pipeline
    def arithmetic(a: int = 2, b: int = 3) -> Any:
        total = t["add"].alias("add")(a, b)
        products = [t["mul"].alias(f"m{i}")(total, i) for i in range(4)]
        return t["xsum"].alias("xsum")(products)

    async with asyncio.timeout(WAIT), executor(celery_rpc, tmp_path) as ex:
        run = await ex.submit(arithmetic, a=4, b=6)
        assert await run.result() == 10 * (0 + 1 + 2 + 3)
        steps = {s.key: s for s in await ex.get_steps(run.run_id)}
        events = await ex.get_events(run.run_id)
    assert {k: (s.status, s.attempts) for k, s in steps.items()} == {
        k: ("succeeded", 1) for k in ("add", "m0", "m1", "m2", "m3", "xsum")
    }
    # task_track_started: STARTED is understood as the step running on that Celery worker.
    started = [e for e in events if e.kind is EventKind.STEP_STARTED]
    assert {e.step for e in started} == set(steps)
    assert all(e.data["worker"].startswith("w1-") for e in started)
    assert len(celery_rpc.executions("mul")) >= 4


async def test_a_failed_task_fails_its_step_with_the_exception_and_traceback_and_skips_dependents(
    celery_rpc: CeleryWorkers, tmp_path: Path
) -> None:
    t = tasks(celery_rpc)

    @pipeline
    def failing() -> Any:
        bad = t["fail"].alias("bad")("no such thing")
        t["add"].alias("after")(bad, 1)
        return t["add"].alias("independent")(1, 1)

    async with asyncio.timeout(WAIT), executor(celery_rpc, tmp_path) as ex:
        run = await ex.submit(failing)
        with pytest.raises(aexec.RunFailedError):
            await run.result()
        steps = {s.key: s for s in await ex.get_steps(run.run_id)}
    assert steps["independent"].status == "succeeded"
    assert steps["after"].status == "skipped"
    error = steps["bad"].error
    assert error is not None
    assert (error.type, error.message) == ("ValueError", "no such thing")
    assert "raise ValueError(message)" in error.traceback


async def test_a_task_retrying_itself_is_one_running_step(
    celery_rpc: CeleryWorkers, tmp_path: Path
) -> None:
    t = tasks(celery_rpc)

    @pipeline
    def retrying() -> Any:
        return t["flaky"].alias("flaky")(2)

    async with asyncio.timeout(WAIT), executor(celery_rpc, tmp_path) as ex:
        run = await ex.submit(retrying)
        assert await run.result() == 2
        steps = await ex.get_steps(run.run_id)
        events = await ex.get_events(run.run_id)
    assert [(s.status, s.attempts) for s in steps] == [("succeeded", 1)]
    retries = [
        e.data["message"]
        for e in events
        if e.kind is EventKind.STEP_PROGRESS and "message" in e.data
    ]
    assert retries == [
        "Celery retries the task: RuntimeError: not yet (0)",
        "Celery retries the task: RuntimeError: not yet (1)",
    ]
    assert not [e for e in events if e.kind is EventKind.STEP_RETRYING]


async def test_a_task_no_worker_knows_is_a_clear_step_error(
    celery_rpc: CeleryWorkers, tmp_path: Path
) -> None:
    unknown = celery_step("tests.celery.tasks.nobody_wrote_this", queue=celery_rpc.queue)

    @pipeline
    def lost() -> Any:
        return unknown(1)

    async with asyncio.timeout(WAIT), executor(celery_rpc, tmp_path) as ex:
        run = await ex.submit(lost)
        with pytest.raises(aexec.RunFailedError):
            await run.result()
        (record,) = await ex.get_steps(run.run_id)
    assert record.error is not None
    assert record.error.type == "NotRegistered"
    assert "tests.celery.tasks.nobody_wrote_this" in record.error.message


async def test_a_queue_no_celery_worker_declared_fails_the_step_instead_of_losing_the_task(
    celery_rpc: CeleryWorkers, tmp_path: Path
) -> None:
    nowhere = celery_step("tests.celery.tasks.add", queue=f"{celery_rpc.prefix}.nobody-here")

    @pipeline
    def unrouted() -> Any:
        return nowhere(1, 2)

    async with asyncio.timeout(WAIT), executor(celery_rpc, tmp_path) as ex:
        run = await ex.submit(unrouted)
        with pytest.raises(aexec.RunFailedError):
            await run.result()
        (record,) = await ex.get_steps(run.run_id)
    assert record.error is not None
    assert record.error.type == "UnroutableError"
    assert "nobody-here" in record.error.message


async def test_a_time_limit_is_a_clear_step_error(
    celery_rpc: CeleryWorkers, tmp_path: Path
) -> None:
    limited = celery_step("tests.celery.tasks.sleep", queue=celery_rpc.queue, time_limit=0.5)

    @pipeline
    def slow() -> Any:
        return limited(30, "limited")

    async with asyncio.timeout(WAIT), executor(celery_rpc, tmp_path) as ex:
        run = await ex.submit(slow)
        with pytest.raises(aexec.RunFailedError):
            await run.result()
        (record,) = await ex.get_steps(run.run_id)
    assert record.error is not None
    assert record.error.type == "TimeLimitExceeded"
    assert not record.error.retryable


async def test_values_cross_to_celery_with_their_types_and_back(
    celery_rpc: CeleryWorkers, tmp_path: Path
) -> None:
    echo = celery_step("tests.celery.tasks.echo", queue=celery_rpc.queue)
    when = dt.datetime(2026, 11, 30, 5, 6, 7, tzinfo=dt.UTC)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    values = {
        "when": when,
        "day": when.date(),
        "money": decimal.Decimal("12.50"),
        "ident": ident,
        "blob": b"\x00\xff",
        "nested": {"list": [1, 2.5, None, True, "x"]},
    }

    @pipeline
    def types() -> Any:
        return [echo.alias(k)(v) for k, v in values.items()]

    async with asyncio.timeout(WAIT), executor(celery_rpc, tmp_path) as ex:
        results = await (await ex.submit(types)).result()
    assert [r["type"] for r in results] == ["datetime", "date", "Decimal", "UUID", "bytes", "dict"]
    assert [r["value"] for r in results] == list(values.values())


async def test_a_value_json_cannot_carry_fails_the_step_with_a_clear_error(
    celery_rpc: CeleryWorkers, tmp_path: Path
) -> None:
    echo = celery_step("tests.celery.tasks.echo", queue=celery_rpc.queue)

    @step
    def make_set() -> set[int]:
        return {1, 2}

    @pipeline
    def unfit() -> Any:
        return echo(make_set())

    async with asyncio.timeout(WAIT), executor(celery_rpc, tmp_path, fail_fast=False) as ex:
        run = await ex.submit(unfit)
        with pytest.raises(aexec.RunFailedError):
            await run.result()
        steps = {s.key: s for s in await ex.get_steps(run.run_id)}
    error = steps["tests.celery.tasks.echo"].error
    assert error is not None
    assert error.type == "CodecError"
    assert "is a set, which does not cross to Celery as JSON" in error.message
    assert celery_rpc.executions("echo") == [] or steps["make_set"].status == "succeeded"


async def test_native_and_celery_steps_feed_each_other_in_one_pipeline(
    celery_rpc: CeleryWorkers, tmp_path: Path
) -> None:
    t = tasks(celery_rpc)

    @step
    def double(x: int) -> int:
        return 2 * x

    @step
    async def describe(total: int, each: list[int]) -> str:
        return f"{total} from {each}"

    @pipeline
    def mixed(n: int = 3) -> Any:
        doubled = [double.alias(f"d{i}")(i) for i in range(n)]  # native
        each = [t["add"].alias(f"a{i}")(d, 100) for i, d in enumerate(doubled)]  # Celery
        total = t["xsum"].alias("total")(each)  # Celery, fan-in
        return describe(total, each)  # native again

    async with asyncio.timeout(WAIT), executor(celery_rpc, tmp_path) as ex:
        assert await (await ex.submit(mixed)).result() == "306 from [100, 102, 104]"


async def test_cancelling_a_run_revokes_its_running_celery_task_with_terminate(
    celery_rpc: CeleryWorkers, tmp_path: Path
) -> None:
    sleeper = celery_step("tests.celery.tasks.sleep", queue=celery_rpc.queue)
    name = f"cancelled-{uuid.uuid4().hex[:6]}"

    @pipeline
    def long() -> Any:
        return sleeper(30, name)

    async with asyncio.timeout(WAIT), executor(celery_rpc, tmp_path) as ex:
        run = await ex.submit(long)
        await wait_for_event(run, EventKind.STEP_STARTED)
        await run.cancel()
        await run.wait()
        assert (await ex.get_run(run.run_id)).status is RunStatus.CANCELLED
        tid = task_id(run.run_id, 1, "tests.celery.tasks.sleep")
        # The Celery worker hears the revoke and terminates the task's process.
        assert await _heard(celery_rpc.processes[0], f"Terminating {tid} (15)")
    assert [line for line in celery_rpc.executions("sleep-start") if name in line]
    assert not [line for line in celery_rpc.executions("sleep-end") if name in line]


async def _heard(process: CeleryProcess, text: str) -> bool:
    """Wait for a Celery worker to print ``text`` (what only its output tells)."""
    return await asyncio.to_thread(process.wait_for, text)


async def test_a_celery_worker_killed_mid_task_with_acks_late_leaves_it_to_another(
    celery_private: CeleryWorkers, tmp_path: Path
) -> None:
    late = celery_step("tests.celery.tasks.sleep_late", queue=celery_private.queue)
    first = celery_private.start("doomed")

    @pipeline
    def survive() -> Any:
        return late(1.0, "survivor")

    async with asyncio.timeout(WAIT), executor(celery_private, tmp_path) as ex:
        run = await ex.submit(survive)
        await wait_for_event(run, EventKind.STEP_STARTED)
        assert await _heard(first, "ledger: sleep_late-start survivor")
        first.kill()  # SIGKILL, pool and all, mid-task: RabbitMQ requeues the unacked task
        celery_private.start("heir")
        assert await run.result() == "survivor"
        (record,) = await ex.get_steps(run.run_id)
        events = await ex.get_events(run.run_id)
    assert (record.status, record.attempts) == ("succeeded", 1)
    assert len(celery_private.executions("sleep_late-start")) == 2
    assert len(celery_private.executions("sleep_late-end")) == 1
    (done,) = [e for e in events if e.kind is EventKind.STEP_SUCCEEDED]
    assert done.data["worker"].startswith("heir-")


async def test_a_task_lost_with_its_celery_worker_is_sent_again_instead_of_waited_for(
    celery_private: CeleryWorkers, tmp_path: Path
) -> None:
    # Not acks_late: the worker acked the message when the task started, so RabbitMQ has
    # nothing to redeliver once the worker is gone.  Its heartbeats stop: the gateway stops
    # vouching for the task, and the coordinator sends it again as a new attempt.
    sleeper = celery_step("tests.celery.tasks.sleep", queue=celery_private.queue)
    name = f"orphan-{uuid.uuid4().hex[:6]}"
    first = celery_private.start("doomed")

    @pipeline
    def orphan() -> Any:
        return sleeper(3.0, name)

    async with asyncio.timeout(WAIT), executor(celery_private, tmp_path, worker_timeout=3.0) as ex:
        run = await ex.submit(orphan)
        await wait_for_event(run, EventKind.STEP_STARTED)
        assert await _heard(first, f"ledger: sleep-start {name}")
        first.kill()  # SIGKILL mid-task, pool and all
        celery_private.start("heir")
        assert await run.result() == name
        (record,) = await ex.get_steps(run.run_id)
        events = await ex.get_events(run.run_id)
    assert (record.status, record.attempts) == ("succeeded", 2)
    assert len([x for x in celery_private.executions("sleep-start") if name in x]) == 2
    assert len([x for x in celery_private.executions("sleep-end") if name in x]) == 1
    (lost,) = [e for e in events if e.kind is EventKind.STEP_RETRYING]
    assert (lost.attempt, lost.data["lost"]) == (1, True)
    assert lost.data["worker"].startswith("doomed-")
    assert lost.data["error"]["type"] == "WorkerLostError"
    (done,) = [e for e in events if e.kind is EventKind.STEP_SUCCEEDED]
    assert (done.attempt, done.data["worker"][:5]) == (2, "heir-")


async def test_a_versioned_celery_step_runs_only_on_the_workers_of_its_version(
    celery_private: CeleryWorkers, tmp_path: Path
) -> None:
    q = celery_private.queue
    celery_private.start("v1")  # the release before: consumes the plain queue
    celery_private.start("v2", queues=f"{q}@2")
    add = "tests.celery.tasks.add"

    @pipeline
    def releases() -> Any:
        return [
            celery_step(add, queue=q, version="2").alias("pinned")(1, 2),
            celery_step(add, queue=q).alias("any")(3, 4),
        ]

    @pipeline
    def unserved() -> Any:
        return celery_step(add, queue=q, version="3")(5, 6)

    async with asyncio.timeout(WAIT), executor(celery_private, tmp_path) as ex:
        run = await ex.submit(releases)
        assert await run.result() == [3, 7]
        events = await ex.get_events(run.run_id)
        lonely = await ex.submit(unserved)
        await lonely.wait()
        (record,) = await ex.get_steps(lonely.run_id)
    ran_on = {e.step: e.data["worker"] for e in events if e.kind is EventKind.STEP_SUCCEEDED}
    assert ran_on["pinned"].startswith("v2-") and ran_on["any"].startswith("v1-")
    assert record.error is not None and record.error.type == "UnroutableError"
    assert f"no Celery queue named '{q}@3'" in record.error.message


async def test_an_event_exchange_aexec_cannot_use_only_costs_the_lost_worker_watch(
    celery_rpc: CeleryWorkers, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exchange = f"{celery_rpc.prefix}.events-elsewhere"
    connection = await aio_pika.connect(celery_rpc.broker)
    async with connection:  # declared otherwise (fanout): aexec's declare is refused
        channel = await connection.channel()
        await channel.declare_exchange(exchange, aio_pika.ExchangeType.FANOUT, durable=True)
    t = tasks(celery_rpc)

    @pipeline
    def one() -> Any:
        return t["add"](20, 22)

    url = f"{celery_rpc.broker}?event_exchange={exchange}"
    workers = dataclasses.replace(celery_rpc, broker=url)
    async with asyncio.timeout(WAIT), executor(workers, tmp_path) as ex:
        assert await (await ex.submit(one)).result() == 42
    assert f"cannot listen to Celery's worker events on exchange {exchange!r}" in caplog.text


async def test_a_duplicate_result_is_never_recorded_twice(
    celery_rpc: CeleryWorkers, tmp_path: Path
) -> None:
    t = tasks(celery_rpc)

    @pipeline
    def two() -> Any:
        return t["echo"].alias("b")(t["add"].alias("a")(1, 2))

    async with asyncio.timeout(WAIT), executor(celery_rpc, tmp_path) as ex:
        run = await ex.submit(two)
        await wait_for_event(run, EventKind.STEP_SUCCEEDED, step="a")
        # The same result again, as a redelivery would bring it, but saying something else.
        await _publish_reply(
            celery_rpc,
            task_id(run.run_id, 1, "a"),
            {"status": "SUCCESS", "result": 999, "traceback": None, "children": []},
        )
        assert await run.result() == {"value": 3, "type": "int"}
        events = await ex.get_events(run.run_id)
    succeeded = [e for e in events if e.kind is EventKind.STEP_SUCCEEDED and e.step == "a"]
    assert len(succeeded) == 1


async def _publish_reply(workers: CeleryWorkers, tid: str, meta: dict[str, Any]) -> None:
    connection = await aio_pika.connect(workers.broker)
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(
                json.dumps({**meta, "task_id": tid}).encode(),
                content_type="application/json",
                content_encoding="utf-8",
                correlation_id=tid,
            ),
            routing_key=f"{workers.prefix}.celery.replies",
        )


async def test_results_come_back_through_a_redis_backend(
    celery_redis: CeleryWorkers, tmp_path: Path
) -> None:
    t = tasks(celery_redis)

    @pipeline
    def over_redis() -> Any:
        total = t["add"].alias("add")(20, 1)
        doubled = t["mul"].alias("mul")(total, 2)
        t["fail"].alias("bad")("through redis")
        return t["flaky"].alias("flaky")(1), doubled

    async with asyncio.timeout(WAIT), executor(celery_redis, tmp_path) as ex:
        run = await ex.submit(over_redis)
        with pytest.raises(aexec.RunFailedError):
            await run.result()
        steps = {s.key: s for s in await ex.get_steps(run.run_id)}
    assert {k: s.status for k, s in steps.items()} == {
        "add": "succeeded",
        "mul": "succeeded",
        "bad": "failed",
        "flaky": "succeeded",
    }
    bad = steps["bad"].error
    assert bad is not None and (bad.type, bad.message) == ("ValueError", "through redis")
    assert codec.decode(steps["mul"].output or b"") == 42


async def test_a_coordinator_taking_over_a_run_hears_its_celery_task_and_runs_it_once(
    celery_rpc: CeleryWorkers,
) -> None:
    sleeper = celery_step("tests.celery.tasks.sleep", queue=celery_rpc.queue)
    name = f"taken-over-{uuid.uuid4().hex[:6]}"

    @pipeline
    def long() -> Any:
        return sleeper(3.0, name)

    def gateway() -> CeleryGateway:
        config = CeleryConfig(celery_rpc.broker, prefix=celery_rpc.prefix, heartbeat_interval=0.1)
        return CeleryGateway(config, MemoryObjectStore())

    compiled = long.compile()
    transport, store = MemoryTransport(), MemoryStore()
    await transport.open()
    await store.open()
    # Silence longer than worker_timeout would re-dispatch the task, had nobody vouched.
    fast = dict(lease=0.3, worker_timeout=1.0)
    async with asyncio.timeout(WAIT):
        doomed = Coordinator(
            transport, store, CoordinatorConfig(id="doomed", **fast), gateways={"celery": gateway()}
        )
        await doomed.__aenter__()
        run = await doomed.submit(compiled.plan)
        await wait_for_event(store.follow(run.run_id), EventKind.STEP_STARTED)
        await doomed.abort()  # as SIGKILL would: the Celery task runs on regardless
        heir = Coordinator(
            transport,
            store,
            CoordinatorConfig(id="heir", adopt=True, **fast),
            gateways={"celery": gateway()},
        )
        async with heir:
            async for event in store.follow(run.run_id):
                if event.kind in (EventKind.RUN_SUCCEEDED, EventKind.RUN_FAILED):
                    break
    record = await store.get_run(run.run_id)
    (step_record,) = await store.get_steps(run.run_id)
    assert record is not None and (record.status, record.owner) == (RunStatus.SUCCEEDED, "heir")
    assert step_record.attempts == 1
    assert codec.decode(step_record.output or b"") == name
    assert [line for line in celery_rpc.executions("sleep-start") if name in line] == [
        f"sleep-start {name}"
    ]
    await store.close()
    await transport.close()
