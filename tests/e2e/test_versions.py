"""Versioned remote steps across processes: workers of two versions of one step serve side
by side, say what they serve in ``worker list``, and ``runs show`` names a version that no
live worker serves."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from aexec.config import Settings
from aexec.events import EventKind
from aexec.executor import Executor
from aexec.testing import wait_for_event
from tests.e2e.cluster import Cluster, make_env

pytestmark = [pytest.mark.rabbitmq, pytest.mark.e2e]

PIPELINES = Path(__file__).resolve().parent / "pipelines"


def load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"versioned_{name}", PIPELINES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_versions_serve_side_by_side_and_a_missing_one_shows_as_waiting(
    cluster: Cluster, amqp_prefix: str
) -> None:
    pipelines = load("versioned")
    cluster.start_worker("v1", "-A", str(PIPELINES / "versions_v1.py"))
    (v1,) = cluster.workers()
    assert v1["steps"] == ["reconstruct", "reconstruct@1"]
    assert v1["queues"] == ["repo", "repo@1"]
    listing = cluster.aexec("worker", "list", "--broker", cluster.broker).stdout
    assert "reconstruct@1" in listing

    settings = Settings(
        broker=cluster.broker, queue_prefix=amqp_prefix, home=make_env(cluster.home)["AEXEC_HOME"]
    )
    async with asyncio.timeout(60), Executor(settings) as ex:
        assert await (await ex.submit(pipelines.room_any)).result() == "v1:u"
        run = await ex.submit(pipelines.room_v2)
        await wait_for_event(run, EventKind.STEP_DISPATCHED)
        shown = await asyncio.to_thread(
            cluster.aexec, "runs", "show", run.run_id, "--broker", cluster.broker
        )
        assert "waiting for version: no live worker serves reconstruct@2" in shown.stdout
        cluster.start_worker("v2", "-A", str(PIPELINES / "versions_v2.py"))
        assert await run.result() == "v2:u"
