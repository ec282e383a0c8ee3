"""A concurrency cap holds across coordinator processes sharing a store (issue 9): two
`aexec run --broker` processes, each the coordinator of its own runs, over RabbitMQ and
one store, never let more attempts of a step capped at 2 run at once than 2 together
(each alone would let 2 run: 4 together without the store's slots)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.cluster import Cluster, use_backends

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq]

CAPPED = str(Path(__file__).resolve().parent / "pipelines" / "capped.py")


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
