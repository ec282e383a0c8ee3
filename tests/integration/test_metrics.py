"""``/metrics``, ``/healthz`` and ``/readyz`` of a real coordinator service and a real
worker over RabbitMQ and PostgreSQL, scraped over HTTP.

The pipeline: ``first`` (queue ``front``) feeds three ``second`` steps (queue ``back``),
which no worker serves.  While ``first`` runs, the coordinator predicts three steps of
demand on ``back`` although its queue holds nothing; once ``first`` is done the messages
reach ``back`` and its depth follows.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aexec.config import Settings
from aexec.executor import Executor
from aexec.loader import load_module_or_file
from aexec.service import run_coordinator, run_worker
from tests.endpoints import free_port, get, scrape, until, value

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]

WAIT = 30.0

STEPS = """
import asyncio
from pathlib import Path

from aexec import pipeline, step

GATE = Path({gate!r})


@step(queue="front")
async def first() -> int:
    while not GATE.exists():  # the test opens the gate once it has seen the demand
        await asyncio.sleep(0.02)
    return 1


@step(queue="back")
def second(x: int, i: int) -> int:
    return x + i


@pipeline
def wave():
    x = first()
    return [second.alias(f"second_{{i}}")(x, i) for i in range(3)]
"""


@dataclass
class Cluster:
    coordinator_port: int
    worker_port: int
    client: Executor
    gate: Path
    steps: Path


@pytest.fixture
async def cluster(
    amqp_url: str, amqp_prefix: str, postgres_dsn: str, tmp_path: Path
) -> AsyncIterator[Cluster]:
    gate = tmp_path / "gate"
    steps = tmp_path / "wave_steps.py"
    steps.write_text(textwrap.dedent(STEPS.format(gate=str(gate))))
    common = {
        "broker": amqp_url,
        "objects": f"file://{tmp_path / 'objects'}",
        "queue_prefix": amqp_prefix,
        "metrics_host": "127.0.0.1",
    }
    ports = free_port(), free_port()
    service = Settings.resolve({**common, "store": postgres_dsn, "metrics_port": ports[0]})
    workers = Settings.resolve({**common, "metrics_port": ports[1]})
    stop = asyncio.Event()
    ready = [asyncio.Event(), asyncio.Event()]
    tasks = [
        asyncio.create_task(run_coordinator(service, stop=stop, ready=ready[0])),
        asyncio.create_task(
            run_worker(
                workers,
                [str(steps)],
                queues=["front"],
                name="metrics-worker",
                pool="thread",
                stop=stop,
                ready=ready[1],
            )
        ),
    ]
    try:
        async with asyncio.timeout(WAIT):
            await asyncio.gather(ready[0].wait(), ready[1].wait())
        async with Executor(Settings.resolve({**common, "remote": True})) as client:
            yield Cluster(ports[0], ports[1], client, gate, steps)
    finally:
        stop.set()
        gate.touch()
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*tasks)


async def test_demand_on_a_queue_rises_before_its_depth_does(cluster: Cluster) -> None:
    module = load_module_or_file(str(cluster.steps))
    run = await cluster.client.submit(module.wave)
    # first runs on the worker: the three seconds wait on it, and no message exists yet.
    worker = await until(
        cluster.worker_port,
        lambda s: value(s, "aexec_worker_steps_in_flight", queue="front") == 1,
    )
    assert value(worker, "aexec_worker_capacity", queue="front") == 100
    coordinator = await until(
        cluster.coordinator_port,
        lambda s: value(s, "aexec_steps_in_flight", queue="front", state="running") == 1,
    )
    assert value(coordinator, "aexec_queue_predicted_demand_steps", queue="back") == 3
    assert value(coordinator, "aexec_queue_predicted_demand_seconds", queue="back") == 3.0
    assert value(coordinator, "aexec_queue_depth", queue="back") in (None, 0.0)
    assert value(coordinator, "aexec_runs_in_flight", pipeline="wave") == 1

    cluster.gate.touch()  # first finishes; the seconds go to a queue nobody serves
    coordinator = await until(
        cluster.coordinator_port, lambda s: value(s, "aexec_queue_depth", queue="back") == 3
    )
    assert value(coordinator, "aexec_queue_predicted_demand_steps", queue="back") == 3
    assert value(coordinator, "aexec_steps_in_flight", queue="back", state="queued") == 3
    assert value(coordinator, "aexec_queue_predicted_demand_steps", queue="front") is None
    assert (
        value(coordinator, "aexec_steps_total", pipeline="wave", step="first", status="succeeded")
        == 1
    )
    assert (
        value(coordinator, "aexec_steps_total", pipeline="wave", step="second", status="dispatched")
        == 3
    )
    assert (
        value(coordinator, "aexec_step_duration_seconds_count", pipeline="wave", step="first") == 1
    )
    worker = await scrape(cluster.worker_port)
    assert (
        value(
            worker, "aexec_worker_attempts_total", queue="front", step="first", outcome="succeeded"
        )
        == 1
    )
    assert value(worker, "aexec_worker_steps_in_flight", queue="front") == 0

    await run.cancel()
    await run.wait()
    coordinator = await until(
        cluster.coordinator_port,
        lambda s: value(s, "aexec_runs_total", pipeline="wave", status="cancelled") == 1,
    )
    assert value(coordinator, "aexec_runs_in_flight", pipeline="wave") is None
    assert value(coordinator, "aexec_queue_predicted_demand_steps", queue="back") is None
    assert (
        value(coordinator, "aexec_run_duration_seconds_count", pipeline="wave", status="cancelled")
        == 1
    )


async def test_coordinator_and_worker_are_live_and_ready_while_they_serve(
    cluster: Cluster,
) -> None:
    for port in (cluster.coordinator_port, cluster.worker_port):
        assert await get(port, "/healthz") == (200, "ok\n")
        assert await get(port, "/readyz") == (200, "ready\n")
        status, body = await get(port, "/nowhere")
        assert status == 404 and "/metrics" in body
