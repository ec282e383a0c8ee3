"""Dynamic pipelines on the production backends: RabbitMQ, PostgreSQL and the S3 server.

Maps (10,000 items, a map of a map, an empty list), a coordinator SIGKILLed in the middle
of a map or of a durable wait and its run taken over by ``aexec coordinator``, cache hits
across runs, and ``max_wait`` running out, all through the CLI as a user runs them.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from tests.e2e.cluster import REPO, Cluster, Process, show, use_backends, wait_for_file

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq, pytest.mark.postgres, pytest.mark.s3]

EXAMPLES = REPO / "examples"
MAP = str(EXAMPLES / "map.py")
WAIT = str(EXAMPLES / "wait_until_healthy.py")
CACHED = str(EXAMPLES / "cached.py")
PIPELINES = REPO / "tests" / "e2e" / "pipelines"
NEVER_READY = str(PIPELINES / "never_ready.py")
SLOW_MAP = str(PIPELINES / "slow_map.py")


@pytest.fixture
def pg(cluster: Cluster, request: pytest.FixtureRequest) -> Cluster:
    use_backends(cluster, "postgres", request)
    return cluster


def worker_name() -> str:
    return f"w-{uuid.uuid4().hex[:6]}"


def events(cluster: Cluster, run_id: str) -> list[dict[str, Any]]:
    logs = cluster.aexec("runs", "logs", run_id, "--json", timeout=60)
    assert logs.returncode == 0, logs.stderr
    return [json.loads(line) for line in logs.stdout.splitlines()]


def first_run_id(cluster: Cluster, driver: Process, deadline: float) -> str:
    while True:
        assert time.monotonic() < deadline, driver.output()
        listed = cluster.aexec("runs", "list", "--json")
        if listed.stdout.strip():
            return str(json.loads(listed.stdout.splitlines()[0])["run_id"])
        time.sleep(0.1)


def kill(driver: Process) -> None:
    driver.popen.send_signal(signal.SIGKILL)
    driver.popen.wait(timeout=10)


def finished(cluster: Cluster, run_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (report := show(cluster, run_id)) is None or report["status"] == "running":
        assert time.monotonic() < deadline, f"not finished: {report and report['status']}"
        time.sleep(0.3)
    return report


def test_a_map_of_ten_thousand_and_a_map_of_it_run_on_postgres(pg: Cluster) -> None:
    pg.start_worker(worker_name(), "-A", MAP, "-c", "200")
    proc = pg.aexec("run", MAP, "-p", "n=10000", "--broker", pg.broker, "--json", timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["result"] == {"nodes": 10000, "total": 460000, "hot": 0}
    steps = report["steps"]
    assert len(steps) == 4 + 2 * 10000
    assert {s["status"] for s in steps.values()} == {"succeeded"}
    assert {f"measure[{i}]" for i in range(10000)} <= set(steps)
    assert {f"grade[{i}]" for i in range(10000)} <= set(steps)
    shown = show(pg, report["run_id"])
    assert shown is not None and shown["steps"] == steps
    expanded = [e for e in events(pg, report["run_id"]) if e["kind"] == "step_expanded"]
    assert sorted(e["step"] for e in expanded) == ["grade", "measure"]


def test_an_empty_list_maps_to_nothing_on_postgres(pg: Cluster) -> None:
    pg.start_worker(worker_name(), "-A", MAP)
    code, report = pg.run(MAP, "-p", "n=0")
    assert code == 0, report
    assert report["result"] == {"nodes": 0, "total": 0, "hot": 0}
    assert {k: s["status"] for k, s in report["steps"].items()} == {
        "discover": "succeeded",
        "measure": "succeeded",
        "grade": "succeeded",
        "summarise": "succeeded",
    }


def test_a_map_taken_over_mid_run_keeps_its_keys_and_runs_each_item_once(pg: Cluster) -> None:
    """The driver dies while ``measure[i]`` run (items from 100 on are held until the test
    releases them): ``measure`` was expanded by it, ``grade`` (a map of the map) is expanded
    by the coordinator that takes the run over."""
    n, held = 2000, 100
    release = pg.home / "release"
    pg.env.update({"AEXEC_LEASE": "2", "AEXEC_HEARTBEAT_INTERVAL": "0.5"})
    pg.start_worker(worker_name(), "-A", SLOW_MAP, "-c", "20")
    driver = pg.start(
        "run", SLOW_MAP, "-p", f"n={n}", "-p", f"hold_from={held}", "-p", f"release={release}",
        "--broker", pg.broker,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    run_id = first_run_id(pg, driver, deadline)
    done = 0
    while done < held:
        assert time.monotonic() < deadline, driver.output()
        report = show(pg, run_id) or {"steps": {}}
        done = sum(
            s["status"] == "succeeded" for k, s in report["steps"].items() if k[:8] == "measure["
        )
        time.sleep(0.2)
    kill(driver)
    interrupted = show(pg, run_id)
    assert interrupted is not None and interrupted["status"] == "running"
    assert len(interrupted["steps"]) == 4 + n  # measure was expanded, grade not yet
    assert not any(k.startswith("grade[") for k in interrupted["steps"])

    release.touch()
    pg.start("coordinator", "-v", "--broker", pg.broker)
    report = finished(pg, run_id, 120)
    assert report["status"] == "succeeded", report["error"]
    assert report["result"] == {"items": n, "total": n * (n - 1), "even": n // 2}
    expected = {"discover", "measure", "grade", "summarise"}
    expected |= {f"measure[{i}]" for i in range(n)} | {f"grade[{i}]" for i in range(n)}
    assert set(report["steps"]) == expected
    logged = events(pg, run_id)
    assert Counter(e["step"] for e in logged if e["kind"] == "step_expanded") == {
        "measure": 1,
        "grade": 1,
    }
    successes = Counter(e["step"] for e in logged if e["kind"] == "step_succeeded")
    assert set(successes) == expected and set(successes.values()) == {1}
    assert sum(e["kind"] == "run_resumed" for e in logged) == 1


def test_a_cache_hit_on_postgres_and_s3_is_recorded_as_an_event(pg: Cluster) -> None:
    pg.start_worker(worker_name(), "-A", CACHED)
    code, first = pg.run(CACHED, "-p", "scene=attic")
    assert code == 0, first
    code, second = pg.run(CACHED, "-p", "scene=attic")
    assert code == 0, second
    code, other = pg.run(CACHED, "-p", "scene=cellar")
    assert code == 0, other
    assert second["result"] == first["result"] != other["result"]

    def render_success(run_id: str) -> dict[str, Any]:
        (event,) = [
            e for e in events(pg, run_id) if e["kind"] == "step_succeeded" and e["step"] == "render"
        ]
        return dict(event["data"])

    assert not render_success(first["run_id"]).get("cached")
    assert render_success(second["run_id"]).get("cached") is True
    assert not render_success(other["run_id"]).get("cached")
    shown = show(pg, second["run_id"])
    assert shown is not None and shown["steps"]["render"]["note"] == "cached"


def test_a_durable_wait_survives_a_takeover_and_checks_once_per_wait(pg: Cluster) -> None:
    pg.env.update({"AEXEC_LEASE": "2", "AEXEC_HEARTBEAT_INTERVAL": "0.5"})
    pg.start_worker(worker_name(), "-A", WAIT, "-c", "1")
    # The wait (30 s) outlasts the kill and the takeover even on a loaded machine, where a
    # new coordinator can take 15 s to start and take the run over: the run must still be
    # waiting when it is resumed.
    driver = pg.start("run", WAIT, "-p", "checks=2", "-p", "every=30", "--broker", pg.broker)
    deadline = time.monotonic() + 30
    run_id = first_run_id(pg, driver, deadline)
    step: dict[str, Any] = {}
    while step.get("status") != "retrying":
        assert time.monotonic() < deadline, driver.output()
        step = (show(pg, run_id) or {"steps": {}})["steps"].get("ceph_healthy", {})
        time.sleep(0.1)
    assert step["note"].startswith("waiting: ceph not healthy yet (check 1), again at ")
    kill(driver)

    pg.start("coordinator", "-v", "--broker", pg.broker)
    deadline = time.monotonic() + 60
    while not any(e["kind"] == "run_resumed" for e in events(pg, run_id)):
        assert time.monotonic() < deadline, "the run was not taken over"
        time.sleep(0.2)
    resumed = show(pg, run_id)
    assert resumed is not None and resumed["status"] == "running"
    assert resumed["steps"]["ceph_healthy"]["status"] == "retrying"
    assert resumed["steps"]["ceph_healthy"]["note"] == step["note"]  # the same pending check

    report = finished(pg, run_id, 60)
    assert report["status"] == "succeeded", report["error"]
    assert report["result"] == "osd-7 weight 0; healthy after 2 checks; osd-7 removed"
    assert report["steps"]["ceph_healthy"] == {"status": "succeeded", "attempts": 2}
    assert (pg.home / f"ceph-checks-{run_id}").read_text() == "2"  # checked once per wait
    logged = events(pg, run_id)
    assert sum(e["kind"] == "step_waiting" for e in logged) == 1


def test_max_wait_fails_a_poll_that_never_comes_true_with_a_clear_error(pg: Cluster) -> None:
    pg.start_worker(worker_name(), "-A", NEVER_READY)
    code, report = pg.run(NEVER_READY)
    assert code == 1, report
    assert report["status"] == "failed"
    assert report["steps"]["ceph_healthy"]["status"] == "failed"
    assert report["steps"]["remove_node"]["status"] == "skipped"
    assert report["error"] is not None
    assert "WaitTimeoutError: step 'ceph_healthy' was still not ready after" in report["error"]
    assert "max_wait=1.5 s" in report["error"] and "ceph-1 still degraded" in report["error"]
    assert "Traceback" not in report["error"]


SUB_PIPELINES = str(EXAMPLES / "sub_pipelines.py")


def test_child_runs_on_postgres_are_linked_both_ways(pg: Cluster) -> None:
    pg.start_worker(worker_name(), "-A", SUB_PIPELINES)
    code, report = pg.run(SUB_PIPELINES, "-P", "replace_as_children", "-p", 'nodes=["a", "b"]')
    assert code == 0, report
    assert report["result"] == "a back in the cluster; b back in the cluster"
    assert list(report["steps"]) == ["a", "b", "report"]
    children = {key: report["steps"][key]["child_run"] for key in ("a", "b")}
    assert report["steps"]["b"]["note"] == f"child run {children['b']}"
    for key, child_id in children.items():
        child = show(pg, child_id)
        assert child is not None and child["status"] == "succeeded"
        assert (child["parent"], child["parent_step"]) == (report["run_id"], key)
        assert list(child["steps"]) == ["drain", "swap", "rejoin"]
        text = pg.aexec("runs", "show", child_id).stdout
        assert f"parent:   {report['run_id']} (its step {key!r} runs this child run)" in text
    assert show(pg, report["run_id"]) == report
    listed = [json.loads(line) for line in pg.aexec("runs", "list", "--json").stdout.splitlines()]
    assert {r["run_id"]: r["parent_step"] for r in listed if r["parent"]} == {
        children["a"]: "a",
        children["b"]: "b",
    }


CHILD_GATED = str(PIPELINES / "child_gated.py")


def test_a_child_run_survives_its_parents_coordinator_killed(pg: Cluster) -> None:
    """The parent's `aexec run` is SIGKILLed while the child's step runs; `aexec
    coordinator` takes both runs over, follows the child it finds (never a second one),
    and the parent step succeeds with its result."""
    marker, release = pg.home / "started", pg.home / "release"
    pg.env.update({"AEXEC_LEASE": "2", "AEXEC_HEARTBEAT_INTERVAL": "0.5"})
    pg.start_worker(worker_name(), "-A", CHILD_GATED)
    driver = pg.start(
        "run", CHILD_GATED, "-P", "parent", "-p", "node=osd-3", "-p", f"marker={marker}",
        "-p", f"release={release}", "--broker", pg.broker,
    )  # fmt: skip
    wait_for_file(marker, driver, timeout=60)
    kill(driver)
    listed = [json.loads(line) for line in pg.aexec("runs", "list", "--json").stdout.splitlines()]
    (parent_id,) = [r["run_id"] for r in listed if r["pipeline"] == "parent"]
    pg.start("coordinator", "-v", "--broker", pg.broker)
    deadline = time.monotonic() + 60
    while not any(e["kind"] == "run_resumed" for e in events(pg, parent_id)):
        assert time.monotonic() < deadline, "the parent was not taken over"
        time.sleep(0.3)
    release.touch()
    report = finished(pg, parent_id, 60)
    assert report["status"] == "succeeded", report["error"]
    assert report["result"] == "osd-3 prepared, released"
    child_id = report["steps"]["child"]["child_run"]
    listed = [json.loads(line) for line in pg.aexec("runs", "list", "--json").stdout.splitlines()]
    assert [r["run_id"] for r in listed if r["parent"] == parent_id] == [child_id]
    child = show(pg, child_id)
    assert child is not None and child["status"] == "succeeded"
    assert child["steps"]["held"]["status"] == "succeeded"  # attempt 2 if its dispatch
    # was not confirmed yet when the coordinator died: at least once, as any step


def test_cancelling_a_parent_run_cancels_its_child_run(pg: Cluster) -> None:
    marker, release = pg.home / "started", pg.home / "release"
    pg.start_worker(worker_name(), "-A", CHILD_GATED)
    driver = pg.start(
        "run", CHILD_GATED, "-P", "parent", "-p", "node=osd-4", "-p", f"marker={marker}",
        "-p", f"release={release}", "--broker", pg.broker, "--json",
    )  # fmt: skip
    wait_for_file(marker, driver, timeout=60)
    listed = [json.loads(line) for line in pg.aexec("runs", "list", "--json").stdout.splitlines()]
    (parent_id,) = [r["run_id"] for r in listed if r["pipeline"] == "parent"]
    (child_id,) = [r["run_id"] for r in listed if r["parent"] == parent_id]
    cancelled = pg.aexec("runs", "cancel", parent_id, "--reason", "change window closed")
    assert cancelled.returncode == 0, cancelled.stderr
    assert driver.wait(60) == 1
    release.touch()  # the held step may finish now: its run is cancelled whatever it returns
    child = finished(pg, child_id, 30)
    assert child["status"] == "cancelled"
    assert f"its parent run {parent_id} was cancelled" in (child["error"] or "")
    parent = show(pg, parent_id)
    assert parent is not None and parent["status"] == "cancelled"
