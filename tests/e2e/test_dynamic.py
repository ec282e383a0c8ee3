"""Dynamic pipelines as users run them over RabbitMQ: a worker process, ``aexec run``.

Each test starts a worker (``-v``) on an example file and waits for its ready line, then
runs a pipeline of that file through the broker with ``--json``.
"""

from __future__ import annotations

import json
import time
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


CONDITIONS = str(EXAMPLES / "conditions.py")


def test_skipped_branches_over_rabbitmq_do_not_fail_the_run(cluster: Cluster) -> None:
    cluster.start_worker(worker_name(), "-A", CONDITIONS)
    code, report = cluster.run(CONDITIONS, "-p", "hour=3")
    assert code == 0, report
    assert report["result"] == "nothing to do"
    assert {k: s["status"] for k, s in report["steps"].items()} == {
        "changes": "skipped",
        "back_up": "skipped",
        "is_daytime": "succeeded",
        "notify_team": "skipped",
        "page_oncall": "skipped",
        "summary": "succeeded",
    }
    logs = cluster.aexec("runs", "logs", report["run_id"], "--json")
    reasons = {}
    for line in logs.stdout.splitlines():
        event = json.loads(line)
        if event["kind"] == "step_skipped":
            reasons[event["step"]] = event["data"].get("reason")
    assert reasons == {
        "changes": "no file changed",
        "back_up": "its input 'changes' was skipped",
        "notify_team": "its condition 'is_daytime' is false",
        "page_oncall": "its condition 'is_daytime' is false",
    }
    code, report = cluster.run(CONDITIONS, "-p", "hour=14", "-p", 'changed=["a.txt"]')
    assert code == 0, report
    assert report["result"] == "backed up 1 file(s); team notified at 14h"
    assert report["steps"]["page_oncall"]["status"] == "succeeded"


SUB_PIPELINES = str(EXAMPLES / "sub_pipelines.py")


def test_sub_pipelines_over_rabbitmq_show_their_prefixed_steps(cluster: Cluster) -> None:
    cluster.start_worker(worker_name(), "-A", SUB_PIPELINES)
    code, report = cluster.run(SUB_PIPELINES, "-P", "replace_all", "-p", 'nodes=["a", "b"]')
    assert code == 0, report
    assert report["result"] == "a back in the cluster; b back in the cluster"
    assert list(report["steps"]) == [
        "a.drain", "a.swap", "a.rejoin", "b.drain", "b.swap", "b.rejoin", "report"
    ]  # fmt: skip
    shown = cluster.aexec("runs", "show", report["run_id"])
    assert "b.rejoin" in shown.stdout


MAP = str(EXAMPLES / "map.py")


def test_a_map_over_ten_thousand_items_runs_over_rabbitmq(cluster: Cluster) -> None:
    cluster.start_worker(worker_name(), "-A", MAP, "-c", "200")
    proc = cluster.aexec(
        "run", MAP, "-p", "n=10000", "--broker", cluster.broker, "--json", timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["result"] == {"nodes": 10000, "total": 460000, "hot": 0}
    steps = report["steps"]
    assert len(steps) == 4 + 2 * 10000
    assert steps["measure[9999]"] == {"status": "succeeded", "attempts": 1}
    assert steps["grade[0]"]["status"] == "succeeded"
    shown = cluster.aexec("runs", "show", report["run_id"], "--json")
    assert set(json.loads(shown.stdout)["steps"]) == set(steps)


WAIT = str(EXAMPLES / "wait_until_healthy.py")


def test_a_durable_wait_over_rabbitmq_shows_in_runs_show_and_then_runs(
    cluster: Cluster,
) -> None:
    cluster.start_worker(worker_name(), "-A", WAIT, "-c", "1")
    running = cluster.start(
        "run", WAIT, "-p", "checks=2", "-p", "every=8", "--broker", cluster.broker, "--json"
    )
    deadline = time.monotonic() + 30
    note = None
    while note is None and time.monotonic() < deadline:
        listed = cluster.aexec("runs", "list", "--json")
        if listed.stdout.strip():
            run_id = json.loads(listed.stdout.splitlines()[0])["run_id"]
            shown = json.loads(cluster.aexec("runs", "show", run_id, "--json").stdout)
            step = shown["steps"].get("ceph_healthy", {})
            if step.get("status") == "retrying":
                note = step.get("note")
        time.sleep(0.1)  # polling the CLI as a user would
    assert note is not None and note.startswith("waiting: ceph not healthy yet (check 1)")
    assert running.wait(60) == 0, running.output()
    report = json.loads("".join(running.out))
    assert report["result"] == "osd-7 weight 0; healthy after 2 checks; osd-7 removed"
    assert report["steps"]["ceph_healthy"] == {"status": "succeeded", "attempts": 2}


CACHED = str(EXAMPLES / "cached.py")


def test_a_cached_step_over_rabbitmq_runs_once_for_the_same_inputs(cluster: Cluster) -> None:
    cluster.start_worker(worker_name(), "-A", CACHED)
    code, first = cluster.run(CACHED, "-p", "scene=attic")
    assert code == 0, first
    code, second = cluster.run(CACHED, "-p", "scene=attic")
    assert code == 0, second
    assert second["result"] == first["result"]
    notes = {}
    for report in (first, second):
        shown = json.loads(cluster.aexec("runs", "show", report["run_id"], "--json").stdout)
        notes[report["run_id"]] = shown["steps"]["render"].get("note")
    assert notes == {first["run_id"]: None, second["run_id"]: "cached"}
