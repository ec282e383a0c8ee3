"""Dynamic pipelines as users run them over RabbitMQ: a worker process, ``aexec run``.

Each test starts a worker (``-v``) on an example file and waits for its ready line, then
runs a pipeline of that file through the broker with ``--json``.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.e2e.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
OVH = str(EXAMPLES / "ovh_canvas.py")


def worker_name() -> str:
    return f"w-{uuid.uuid4().hex[:6]}"


@pytest.mark.parametrize(("name", "steps"), [("chain_of_chords", 57), ("nested_graph", 23)])
def test_the_ovh_canvas_workflows_run_over_rabbitmq(
    cluster: Cluster, name: str, steps: int
) -> None:
    cluster.start_worker(worker_name(), "-A", OVH)
    code, report = cluster.run(OVH, "-P", name)
    assert code == 0, report
    assert report["status"] == "succeeded"
    assert report["result"] is True
    assert len(report["steps"]) == steps
    assert {s["status"] for s in report["steps"].values()} == {"succeeded"}
