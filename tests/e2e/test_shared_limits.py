"""Limits hold across coordinator processes sharing a store (issue 9).

Two `aexec run --broker` processes, each the coordinator of its own runs, over RabbitMQ
and one store, never let more attempts of a step capped at 2 run at once than 2 together
(each alone would let 2 run: 4 together without the store's slots).  Two long-lived
`aexec coordinator` services on one PostgreSQL database and one broker, driving the runs
that remote clients submit, keep a cap and a rate limit together, as counted by the
workers' steps.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.cluster import Cluster, Process, use_backends

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq]

CAPPED = str(Path(__file__).resolve().parent / "pipelines" / "capped.py")
RATED = str(Path(__file__).resolve().parent / "pipelines" / "rated.py")


@pytest.mark.parametrize(
    "backends",
    ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.s3])],
)
def test_two_coordinator_processes_together_keep_a_step_under_its_cap(
    cluster: Cluster, backends: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    use_backends(cluster, backends, request)
    folder = tmp_path / "gauge"
    folder.mkdir()
    cluster.start_worker("w", "-A", CAPPED)
    run = ("run", CAPPED, "-p", f"folder={folder}", "-p", "n=12", "--broker", cluster.broker)
    drivers = [cluster.start(*run, "--json") for _ in range(2)]
    reports = []
    for driver in drivers:
        assert driver.wait(timeout=90) == 0, driver.output()
        reports.append(json.loads("".join(driver.out)))
    assert [r["status"] for r in reports] == ["succeeded", "succeeded"]
    assert all(r["result"] == list(range(12)) for r in reports)
    lines = [line.split() for line in (folder / "seen").read_text().splitlines()]
    seen, runs = [int(count) for count, _ in lines], [run for _, run in lines]
    # The two runs ran at the same time: the first run's attempts did not all come first.
    other_first = next(i for i, r in enumerate(runs) if r != runs[0])
    first_last = max(i for i, r in enumerate(runs) if r == runs[0])
    assert other_first < first_last, runs
    assert len(seen) == 24  # every attempt ran once
    assert max(seen) == 2, seen  # never more than the cap at once, both runs together


def owners(dsn: str, run_ids: list[str]) -> dict[str, str]:
    """The coordinator holding each run, as the store records it."""

    async def read() -> dict[str, str]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT run_id, owner FROM aexec_runs WHERE run_id = ANY($1::text[])", run_ids
            )
        finally:
            await conn.close()
        return {row["run_id"]: row["owner"] for row in rows}

    return asyncio.run(read())


def reports_of(clients: list[Process]) -> list[dict[str, object]]:
    reports = []
    for client in clients:
        assert client.wait(timeout=120) == 0, client.output()
        reports.append(json.loads("".join(client.out)))
    return reports


@pytest.mark.postgres
@pytest.mark.s3
def test_two_coordinator_services_keep_a_cap_and_a_rate_limit_for_remote_clients_together(
    cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    use_backends(cluster, "postgres", request)
    folder = tmp_path / "gauge"
    folder.mkdir()
    for _ in range(2):
        service = cluster.start("coordinator", "-v", "--broker", cluster.broker)
        service.wait_for_line("connected to RabbitMQ")
    cluster.start_worker("capped-w", "-A", CAPPED, "-c", "8")
    cluster.start_worker("rated-w", "-A", RATED, "-c", "8")
    remote = ("-p", f"folder={folder}", "--remote", "--broker", cluster.broker, "--json")
    clients = [cluster.start("run", CAPPED, "-p", "n=6", *remote) for _ in range(4)]
    clients += [cluster.start("run", RATED, "-p", "n=5", *remote) for _ in range(4)]
    reports = reports_of(clients)
    assert [r["status"] for r in reports] == ["succeeded"] * 8
    run_ids = [str(r["run_id"]) for r in reports]
    held = owners(cluster.env["AEXEC_STORE"], run_ids)
    # Both services drove runs of each pipeline (remote submissions go to either).
    assert len({held[run_id] for run_id in run_ids[:4]}) == 2, held
    assert len({held[run_id] for run_id in run_ids[4:]}) == 2, held

    # The cap: never more than 2 attempts at once, counted by the steps themselves.
    seen = [int(line.split()[0]) for line in (folder / "seen").read_text().splitlines()]
    assert len(seen) == 24
    assert max(seen) == 2, seen

    # The rate: one bucket of 4 tokens refilled at 4/s for both services, so the 20 steps
    # take at least (20 - 4) / 4 = 4 s to start (two buckets: 1.5 s), and no second
    # holds more than the bucket and its refill.
    starts = sorted(
        float(line.split()[0]) for line in (folder / "starts").read_text().split("\n") if line
    )
    assert len(starts) == 20
    assert starts[-1] - starts[0] >= 3.5, starts
    for i, first in enumerate(starts):
        within = sum(1 for t in starts[i:] if t - first < 1.0)
        assert within <= 4 + 4 + 1, (first, starts)  # bucket + one second's refill (+ jitter)
