"""Live step output across real processes: a worker over RabbitMQ runs steps that print,
log, report progress and emit events; ``aexec runs logs --follow --step`` in another
process shows them while the step still runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.cluster import TIMEOUT, Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq]

TALKING = str(Path(__file__).resolve().parent / "pipelines" / "talking.py")


def first_run_id(cluster: Cluster) -> str:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        listed = cluster.aexec("runs", "list", "--json")
        if listed.stdout:
            return str(json.loads(listed.stdout.splitlines()[0])["run_id"])
        time.sleep(0.05)
    pytest.fail("the run never appeared")


def test_runs_logs_follow_shows_a_remote_step_s_output_live_filtered_to_one_step(
    cluster: Cluster,
) -> None:
    release = cluster.home / "release"
    worker, _ = cluster.start_worker("talker", "-A", TALKING)
    run = cluster.start("run", TALKING, "-p", f"release={release}", "--broker", cluster.broker)
    run_id = first_run_id(cluster)
    follower = cluster.start("runs", "logs", run_id, "--follow", "--step", "talk", "--json")
    # Seen while the step still runs (it waits for the release file).
    hello = json.loads(follower.wait_for_line('"hello from talk"', stdout=True))
    assert hello["kind"] == "step_output" and hello["data"]["lines"] == ["hello from talk"]
    assert hello["data"]["worker"] == "talker"
    follower.wait_for_line('"step_event"', stdout=True)
    release.touch()
    assert follower.wait() == 0, follower.output()
    assert run.wait() == 0, run.output()
    events = [json.loads(line) for line in follower.out]
    assert {e["step"] for e in events} == {"talk"}  # murmur's are filtered out
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "step_dispatched" and kinds[-1] == "step_succeeded"
    (log,) = [e["data"] for e in events if e["kind"] == "step_log"]
    assert (log["level"], log["logger"], log["message"]) == ("INFO", "talking", "working on talk")
    (progress,) = [e["data"] for e in events if e["kind"] == "step_progress"]
    assert (progress["fraction"], progress["message"]) == (0.5, "half way")
    (emitted,) = [e["data"] for e in events if e["kind"] == "step_event"]
    assert (emitted["name"], emitted["data"]) == ("rows", {"n": 3})
    lines = [line for e in events if e["kind"] == "step_output" for line in e["data"]["lines"]]
    assert lines == ["hello from talk", "bye from talk"]
    # The worker's own stderr still shows what its steps print, and their log lines name
    # the run, step and attempt.
    worker.wait_for_line("murmur, murmur", stdout=True)
    warning = worker.wait_for_line("a murmur")
    assert f"[{run_id[:8]} murmur#1]" in warning

    shown = cluster.aexec("runs", "logs", run_id, "--step", "murmur")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout.splitlines()
    assert any(
        line.split()[1:4] == ["stdout", "murmur", "#1"] and "murmur, murmur" in line for line in out
    )
    assert any("log" in line.split()[1] and "WARNING talking: a murmur" in line for line in out)
    assert all(" murmur " in line for line in out)

    unknown = cluster.aexec("runs", "logs", run_id, "--step", "nope")
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert unknown.stderr.strip() == f"aexec: error: run {run_id} has no step 'nope'"
