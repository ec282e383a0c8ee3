"""The operations endpoint of ``aexec worker start`` and ``aexec coordinator`` as users start
them: the port from ``--metrics-port`` or ``AEXEC_METRICS_PORT``, and bad ports refused."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tests.e2e.cluster import Cluster
from tests.e2e.test_cli import FAILING, aexec, assert_bad_input
from tests.endpoints import free_port, get, scrape, value

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq]


async def test_a_worker_serves_metrics_and_health_on_the_port_from_the_environment(
    cluster: Cluster,
) -> None:
    port = free_port()
    cluster.env["AEXEC_METRICS_PORT"] = str(port)
    await asyncio.to_thread(cluster.start_worker, "w-metrics", "-A", FAILING, "-c", "3")
    assert await get(port, "/readyz") == (200, "ready\n")
    assert await get(port, "/healthz") == (200, "ok\n")
    samples = await scrape(port)
    assert value(samples, "aexec_worker_capacity", queue="default") == 3
    assert value(samples, "aexec_worker_steps_in_flight", queue="default") == 0


async def test_a_coordinator_serves_its_endpoint_on_the_port_of_its_flag(
    cluster: Cluster, postgres_dsn: str
) -> None:
    port = free_port()
    coordinator = cluster.start(
        "coordinator",
        "-v",
        "--metrics-port",
        str(port),
        "--broker",
        cluster.broker,
        "--store",
        postgres_dsn,
    )
    await asyncio.to_thread(coordinator.wait_for_line, f"on http://0.0.0.0:{port}")
    assert await get(port, "/healthz") == (200, "ok\n")
    samples = await scrape(port)
    assert ("aexec_runs_in_flight", ()) not in samples  # no run, no series


def test_a_metrics_port_out_of_range_is_a_one_line_error(tmp_path: Path) -> None:
    result = aexec(
        tmp_path / "home",
        "worker",
        "start",
        "-A",
        FAILING,
        "--broker",
        "amqp://h/",
        "--metrics-port",
        "70000",
    )
    assert_bad_input(result, "metrics_port must be 0 (off) .. 65535")


def test_a_metrics_port_in_use_is_a_one_line_error(cluster: Cluster) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cluster.aexec(
            "worker",
            "start",
            "-A",
            FAILING,
            "--broker",
            cluster.broker,
            "--metrics-port",
            str(port),
        )
    assert result.returncode == 2, result
    assert result.stderr.strip() == (
        f"aexec: error: cannot serve metrics on 0.0.0.0:{port}: the port is in use"
    )
