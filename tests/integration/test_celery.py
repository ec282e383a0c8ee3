"""Celery tasks as aexec steps, against unchanged Celery worker processes on the real
RabbitMQ, results over the ``rpc://`` backend (and Redis, at the end)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from aexec import pipeline
from aexec.celery import celery_step
from aexec.config import Settings
from aexec.events import EventKind
from aexec.executor import Executor
from tests.plugins.celery import CeleryWorkers

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
