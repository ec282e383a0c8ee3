"""The worker's side of issue 8 with real processes over RabbitMQ: a graceful stop runs
nothing twice, a completion nobody can receive does not hold a worker, and the queued steps
of a run that ended never start, even on a worker started after the end.

Workers, coordinators and clients are subprocesses (``tests/e2e/cluster.py``) on the shared
RabbitMQ under a random queue prefix.  Tests wait for conditions (a log line, a file, a queue
count on the broker) with a deadline, never for a fixed time.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from aexec import messages
from aexec.transport.amqp import AmqpTransport
from aexec.wire import step_queue
from tests.e2e.cluster import Cluster, Process
from tests.e2e.test_failures import (
    FAST_LEASES,
    executions,
    new_name,
    report_of,
    shared_queue_counts,
    start_held_run,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq]

PIPELINES = Path(__file__).resolve().parent / "pipelines"
HELD = str(PIPELINES / "held.py")
UNSERVED = str(PIPELINES / "unserved.py")
LATE = str(PIPELINES / "late.py")


def name_of(worker: Process) -> str:
    """The worker's name, from the line it logs once ready."""
    for line in worker.err:
        if found := re.search(r"worker (\S+) ready:", line):
            return found.group(1)
    raise AssertionError(f"the worker never said it was ready\n{worker.output()}")


def logged(process: Process, fragment: str) -> bool:
    """Whether ``process`` logged a line containing ``fragment`` so far."""
    return any(fragment in line for line in process.err)


def late_runs(log: Path) -> list[str]:
    """The run ids of the executions of the late step, in order."""
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def counts(amqp_url: str, cluster: Cluster, queue: str) -> tuple[int, int]:
    """``(ready, unacked)`` of step queue ``queue`` on the broker."""
    prefix = cluster.env["AEXEC_QUEUE_PREFIX"]
    return shared_queue_counts(amqp_url, prefix).get(f"{prefix}.{step_queue(queue)}", (0, 0))


# -- draining is not dying ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["SIGTERM", "worker terminate"])
def test_a_stopping_worker_finishes_its_step_and_no_other_worker_runs_it(
    cluster: Cluster, tmp_path: Path, amqp_url: str, how: str
) -> None:
    cluster.env.update(FAST_LEASES, AEXEC_ACK_AFTER="60")  # the delivery stays unacked
    a, run, log, release = start_held_run(cluster, tmp_path)
    b, _ = cluster.start_worker(new_name("b"), "-A", HELD)

    if how == "SIGTERM":
        a.popen.send_signal(signal.SIGTERM)
        a.wait_for_line("SIGTERM: stopping")
    else:
        asked = cluster.aexec("worker", "terminate", name_of(a), "--broker", cluster.broker)
        assert asked.returncode == 0, asked.stderr
        a.wait_for_line("asked to terminate")
    a.wait_for_line("steps in flight finish first")
    # a drains: its step goes on, and a still holds its delivery (b was not given it).
    assert counts(amqp_url, cluster, "held") == (0, 1)
    assert a.popen.poll() is None
    release.touch()

    assert a.wait() == 0, a.output()
    assert run.wait() == 0, run.output()
    report = report_of(run)
    assert report["steps"] == {"hold": {"status": "succeeded", "attempts": 1}}
    assert executions(log) == [(1, a.pid)]  # b never ran it
    assert counts(amqp_url, cluster, "held") == (0, 0)
    assert b.popen.poll() is None


# -- a completion nobody can receive ------------------------------------------------------


async def publish_orphan_step(cluster: Cluster) -> None:
    """A step message whose coordinator is gone: its reply queue does not exist."""
    transport = AmqpTransport(cluster.broker, prefix=cluster.env["AEXEC_QUEUE_PREFIX"])
    await transport.open()
    try:
        await transport.declare_queue(step_queue("unserved"))
        body = messages.StepMessage(
            "orphan-run", "nobody_serves_this", 1, "nobody_serves_this", b"\x92\x90\x80", [],
            None, "reply.gone-coordinator",
        ).encode()  # fmt: skip
        await transport.publish(step_queue("unserved"), body)
    finally:
        await transport.close()


def test_a_worker_drops_a_completion_whose_reply_queue_is_gone_and_still_stops_at_once(
    cluster: Cluster, tmp_path: Path, amqp_url: str
) -> None:
    log = tmp_path / "late"
    cluster.env["LATE_LOG"] = str(log)
    asyncio.run(publish_orphan_step(cluster))
    worker, _ = cluster.start_worker(new_name("w"), "-A", LATE)
    wait_until(
        lambda: logged(worker, "dropped the completion of step nobody_serves_this (attempt 1)"),
        "the worker gives the completion up",
        worker,
    )
    assert late_runs(log) == ["orphan-run"]
    wait_until(
        lambda: counts(amqp_url, cluster, "unserved") == (0, 0),
        "the worker acks the step",
        worker,
        interval=0.2,
    )

    worker.popen.send_signal(signal.SIGTERM)

    assert worker.wait() == 0, worker.output()
    assert late_runs(log) == ["orphan-run"]


# -- queued steps of a run that ended ------------------------------------------------------


def test_the_queued_step_of_a_cancelled_run_never_starts_on_a_worker_started_later(
    cluster: Cluster, tmp_path: Path, amqp_url: str
) -> None:
    store = f"sqlite:///{tmp_path / 'coordinator.db'}"
    coordinator = cluster.start("coordinator", "-v", "--broker", cluster.broker, "--store", store)
    coordinator.wait_for_line("connected to RabbitMQ")
    client = cluster.start("run", UNSERVED, "--remote", "--broker", cluster.broker, "--json")
    wait_until(
        lambda: counts(amqp_url, cluster, "unserved") == (1, 0),
        "the step waits in its queue",
        client,
        coordinator,
        interval=0.1,
    )

    client.popen.send_signal(signal.SIGINT)  # the client cancels its run
    assert client.wait() == 130, client.output()

    def run_status() -> str | None:
        listed = cluster.aexec("runs", "list", "--json", "--store", store)
        runs: list[dict[str, Any]] = [json.loads(line) for line in listed.stdout.splitlines()]
        return runs[0]["status"] if runs else None

    wait_until(lambda: run_status() == "cancelled", "the run is cancelled", coordinator)
    log = tmp_path / "late"
    cluster.env["LATE_LOG"] = str(log)
    worker, _ = cluster.start_worker(new_name("late"), "-A", LATE)
    wait_until(
        lambda: logged(worker, "skipped step nobody_serves_this (attempt 1)"),
        "the worker skips the step",
        worker,
    )
    wait_until(
        lambda: counts(amqp_url, cluster, "unserved") == (0, 0),
        "the worker acks the skipped step",
        worker,
        interval=0.2,
    )
    assert late_runs(log) == []
    worker.popen.send_signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output()
