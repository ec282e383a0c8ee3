"""A coordinator SIGKILLed in the middle of a 10,000-step run; another one finishes it.

`aexec run --broker` coordinates the run in its own process; it is killed with SIGKILL once
part of the run is done.  `aexec coordinator` on the same store then takes the run over when
the dead one's lease ends, consumes the completions still waiting in the dead one's reply
queue, re-dispatches what was lost, and finishes the run: every step succeeds exactly once.
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest

from tests.e2e.cluster import REPO, Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq]

CHORDS = str(REPO / "examples" / "chords.py")


def show(cluster: Cluster, run_id: str) -> dict[str, Any] | None:
    proc = cluster.aexec("runs", "show", run_id, "--json")
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def test_a_killed_coordinators_run_is_taken_over_and_finished(cluster: Cluster) -> None:
    cluster.env.update({"AEXEC_LEASE": "2", "AEXEC_HEARTBEAT_INTERVAL": "0.5"})
    cluster.start_worker("w1", "-A", CHORDS)
    cluster.start_worker("w2", "-A", CHORDS)
    driver = cluster.start("run", CHORDS, "-p", "n=900", "--broker", cluster.broker)
    deadline = time.monotonic() + 60
    run_id = None
    while (
        run_id is None
        or (
            done := sum(
                s["status"] == "succeeded"
                for s in (show(cluster, run_id) or {"steps": {}})["steps"].values()
            )
        )
        < 1500
    ):
        assert time.monotonic() < deadline, driver.output()
        assert driver.popen.poll() is None, "the run ended before it could be interrupted"
        listed = cluster.aexec("runs", "list", "--json")
        if listed.stdout:
            run_id = json.loads(listed.stdout.splitlines()[0])["run_id"]
        time.sleep(0.2)
    driver.popen.send_signal(signal.SIGKILL)
    driver.popen.wait(timeout=10)
    interrupted = show(cluster, run_id)
    assert interrupted is not None and interrupted["status"] == "running"
    assert done < 9902

    cluster.start("coordinator", "-v", "--broker", cluster.broker)
    deadline = time.monotonic() + 180
    while (report := show(cluster, run_id)) is None or report["status"] == "running":
        assert time.monotonic() < deadline, f"not finished: {report and report['status']}"
        time.sleep(0.5)
    assert report["status"] == "succeeded", report["error"]
    assert report["result"] is True
    assert len(report["steps"]) == 9902
    assert all(s["status"] == "succeeded" for s in report["steps"].values())

    logs = cluster.aexec("runs", "logs", run_id, "--json", timeout=60)
    events = [json.loads(line) for line in logs.stdout.splitlines()]
    successes: dict[str, int] = {}
    for event in events:
        if event["kind"] == "step_succeeded":
            successes[event["step"]] = successes.get(event["step"], 0) + 1
    assert len(successes) == 9902 and set(successes.values()) == {1}  # exactly once each
    assert sum(e["kind"] == "run_resumed" for e in events) == 1
