"""A real fan-in over the message cap, with real processes over RabbitMQ: 1,100 outputs of
64,000 bytes (each small enough to travel inline) into one step make a 70 MB step message,
over the 64 MiB cap.  The coordinator moves its largest inputs to the object store, the
worker loads them back, and the run succeeds; nothing is dead-lettered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aexec.config import MAX_MESSAGE_SIZE
from tests.e2e.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq]

WIDE = str(Path(__file__).resolve().parent / "pipelines" / "wide.py")
N, SIZE = 1100, 64_000


def test_a_fan_in_over_the_message_cap_runs_with_its_largest_inputs_stored(
    cluster: Cluster,
) -> None:
    assert N * SIZE > MAX_MESSAGE_SIZE
    cluster.start_worker("w1", "-A", WIDE)
    proc = cluster.aexec("run", WIDE, "--broker", cluster.broker, "--json", timeout=240)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["result"] == [N, N * SIZE, sum(i % 251 for i in range(N))]
    assert report["steps"]["measure"] == {"status": "succeeded", "attempts": 1}
    run_id = report["run_id"]
    moved = sorted((cluster.home / "objects" / "outputs" / run_id).glob("p*/1"))
    assert 0 < len(moved) < N  # some inputs went by reference, as few as fit the message
    dead = cluster.aexec("dlq", "list", "--json", "--broker", cluster.broker)
    assert (dead.returncode, dead.stdout) == (0, "")
