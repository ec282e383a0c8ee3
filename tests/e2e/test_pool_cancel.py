"""Cancelling sync steps that run in a worker's process pool, with real processes over
RabbitMQ: ``aexec worker start --pool process``, runs started with ``aexec run`` and
cancelled with ``aexec runs cancel``.  A step that ignores its cancellation is killed with
its child process after the cancel grace (``AEXEC_CANCEL_GRACE``); one that stops by
itself keeps its child; a step of another run in the pool's other child is untouched."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import Cluster, Process
from tests.e2e.test_failures import new_name, report_of, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq]

STUBBORN = str(Path(__file__).resolve().parent / "pipelines" / "stubborn.py")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pid_in(path: Path, *watched: Process) -> int:
    wait_until(path.exists, f"{path.name} appears", *watched)
    return int(path.read_text())


def start_run(cluster: Cluster, pipeline: str, where: Path) -> Process:
    where.mkdir()
    return cluster.start(
        "run", STUBBORN, "-P", pipeline, "-p", f"where={where}",
        "--broker", cluster.broker, "--json",
    )  # fmt: skip


def cancel(cluster: Cluster, pipeline: str) -> str:
    """Cancel the run of ``pipeline`` with ``aexec runs cancel``; returns its id."""
    listed = cluster.aexec("runs", "list", "--json")
    runs: list[dict[str, Any]] = [json.loads(line) for line in listed.stdout.splitlines()]
    (run_id,) = [r["run_id"] for r in runs if r["pipeline"] == pipeline]
    cancelled = cluster.aexec("runs", "cancel", run_id, "--broker", cluster.broker)
    assert cancelled.returncode == 0, cancelled.stderr
    return str(run_id)


def test_cancel_kills_a_stubborn_sync_step_stops_a_polite_one_and_spares_its_sibling(
    cluster: Cluster, tmp_path: Path
) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs a process pool of two children (the pool has one per core)")
    cluster.env["AEXEC_CANCEL_GRACE"] = "1"
    worker, _ = cluster.start_worker(new_name("pool"), "-A", STUBBORN, "--pool", "process")
    sibling = start_run(cluster, "sibling", tmp_path / "sibling")
    doomed = start_run(cluster, "doomed", tmp_path / "doomed")
    neighbour = pid_in(tmp_path / "sibling" / "steady.pid", worker, sibling)
    victim = pid_in(tmp_path / "doomed" / "stubborn.pid", worker, doomed)
    assert victim != neighbour

    cancel(cluster, "doomed")
    assert doomed.wait() == 1, doomed.output()
    report = report_of(doomed)
    assert report["status"] == "cancelled"
    assert report["steps"] == {"stubborn": {"status": "cancelled", "attempts": 1}}
    worker.wait_for_line(f"within 1 s of its cancellation: killing its child process {victim}")
    wait_until(lambda: not alive(victim), "the stubborn step's child is gone", worker)
    assert alive(neighbour) and sibling.popen.poll() is None  # the other child runs on

    (tmp_path / "sibling" / "release").touch()
    assert sibling.wait() == 0, sibling.output()
    assert report_of(sibling)["result"] == neighbour

    polite = start_run(cluster, "cooperative", tmp_path / "polite")
    kept = pid_in(tmp_path / "polite" / "polite.pid", worker, polite)
    cancel(cluster, "cooperative")
    assert polite.wait() == 1, polite.output()
    assert report_of(polite)["status"] == "cancelled"
    wait_until((tmp_path / "polite" / "polite.stopped").exists, "the polite step stops", worker)
    assert alive(kept) and alive(neighbour)  # nothing killed: both children serve on

    worker.popen.send_signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output()
    assert sum("killing its child process" in line for line in worker.err) == 1
    wait_until(lambda: not alive(kept) and not alive(neighbour), "the children exit")
