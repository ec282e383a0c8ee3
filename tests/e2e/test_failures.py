"""Failures as they happen in production, with real processes: a worker SIGKILLed mid-step,
a step that outlives RabbitMQ's ``consumer_timeout``, a broker restart and forcibly closed
connections mid-run, an unreachable broker, a coordinator service with remote clients.

Workers, coordinators and ``aexec run`` are subprocesses (``tests/e2e/cluster.py``).  Tests
that only kill aexec processes use the shared RabbitMQ with a random queue prefix (the
``cluster`` fixture); tests that restart the broker, cut its connections or change its
settings use a private node started for the session (``tests/plugins/private_rabbitmq``),
so the shared broker is never touched.  Tests wait for conditions (a log line, a file, a
queue count on the broker) with a deadline, never for a fixed time, except where a timer
of the broker itself must elapse.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import pytest

from tests.e2e.cluster import TIMEOUT, Cluster, Process, command, make_env
from tests.plugins.rabbitmq import LOCAL_HOSTS
from tests.plugins.services import service_unavailable

if TYPE_CHECKING:  # the plugin is imported by pytest (as `pytest_plugins`), not here
    from tests.plugins.private_rabbitmq import PrivateRabbit

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq]

PIPELINES = Path(__file__).resolve().parent / "pipelines"
HELD = str(PIPELINES / "held.py")
SWARM = str(PIPELINES / "swarm.py")
UNSERVED = str(PIPELINES / "unserved.py")
REMOTE = str(PIPELINES / "remote.py")
TEXT_STEPS = str(PIPELINES / "text_steps.py")

# Liveness settings short enough for tests: heartbeats every 0.2 s, a worker silent for 2 s
# has lost its steps.
FAST_LEASES = {"AEXEC_HEARTBEAT_INTERVAL": "0.2", "AEXEC_WORKER_TIMEOUT": "2"}


# -- helpers ---------------------------------------------------------------------------


def wait_until(
    condition: Callable[[], bool],
    what: str,
    *watched: Process,
    timeout: float = TIMEOUT,
    interval: float = 0.05,
) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` s or when a watched
    process exits meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition():
        exited = [p for p in watched if p.popen.poll() is not None]
        if exited or time.monotonic() > deadline:
            reason = "a process exited" if exited else f"not within {timeout:g} s"
            outputs = "\n".join(p.output() for p in watched)
            pytest.fail(f"{what}: {reason}\n{outputs}")
        time.sleep(interval)


def executions(log: Path) -> list[tuple[int, int]]:
    """``(attempt, worker pid)`` of every execution of the ``hold`` step, in order."""
    if not log.exists():
        return []
    return [(int(a), int(p)) for a, p in (line.split() for line in log.read_text().splitlines())]


def report_of(run: Process) -> dict[str, Any]:
    report: dict[str, Any] = json.loads("".join(run.out))
    return report


def events_of(cluster: Cluster, run_id: str) -> list[dict[str, Any]]:
    """The run's event log, as ``aexec runs logs RUN_ID --json`` prints it."""
    proc = cluster.aexec("runs", "logs", run_id, "--json")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def shared_queue_counts(amqp_url: str, prefix: str) -> dict[str, tuple[int, int]]:
    """``{queue: (ready, unacked)}`` of this test's queues on the shared broker (read-only
    ``rabbitmqctl list_queues``)."""
    parts = urlsplit(amqp_url)
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None or (parts.hostname or "localhost") not in LOCAL_HOSTS:
        service_unavailable("counting unacked deliveries needs rabbitmqctl and a local broker")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    proc = subprocess.run(
        [str(rabbitmqctl), "-q", "list_queues", "-p", vhost, "name", "messages_ready",
         "messages_unacknowledged"],
        capture_output=True, text=True, timeout=TIMEOUT, check=True,
    )  # fmt: skip
    counts: dict[str, tuple[int, int]] = {}
    for line in proc.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[0].startswith(prefix + "."):
            counts[fields[0]] = (int(fields[1]), int(fields[2]))
    return counts


def closed_port() -> int:
    """A local TCP port nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def new_name(role: str) -> str:
    return f"{role}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def private(tmp_path: Path, private_rabbitmq: PrivateRabbit) -> Iterator[Cluster]:
    """Processes on the private RabbitMQ node, under a fresh queue prefix."""
    home = tmp_path / "home"
    home.mkdir()
    cluster = Cluster(home, f"aexec-test-{uuid.uuid4().hex[:8]}", private_rabbitmq.url)
    try:
        yield cluster
    finally:
        for process in cluster.processes:
            process.stop()


# -- a worker SIGKILLed mid-step ---------------------------------------------------------


def start_held_run(cluster: Cluster, tmp_path: Path) -> tuple[Process, Process, Path, Path]:
    """Worker ``a`` alone, and a run whose ``hold`` step it is running; returns
    ``(a, run, log, release)``."""
    log, release = tmp_path / "executions", tmp_path / "release"
    a, _ = cluster.start_worker(new_name("a"), "-A", HELD)
    run = cluster.start(
        "run", HELD, "-p", f"log={log}", "-p", f"release={release}",
        "--broker", cluster.broker, "--json",
    )  # fmt: skip
    wait_until(lambda: executions(log) == [(1, a.pid)], "worker a runs the step", a, run)
    return a, run, log, release


def test_a_step_acked_early_is_run_again_elsewhere_when_its_worker_is_killed(
    cluster: Cluster, tmp_path: Path, amqp_url: str
) -> None:
    cluster.env.update(FAST_LEASES, AEXEC_ACK_AFTER="0.5")
    a, run, log, release = start_held_run(cluster, tmp_path)
    step_queue = f"{cluster.env['AEXEC_QUEUE_PREFIX']}.step.held"
    # The heartbeat named the step to the coordinator, then the worker acked the delivery:
    # from now on only the coordinator's lease on a's heartbeats protects the step.
    wait_until(
        lambda: (
            shared_queue_counts(amqp_url, cluster.env["AEXEC_QUEUE_PREFIX"]).get(step_queue)
            == (0, 0)
        ),
        "worker a acks the step's delivery early",
        a,
        run,
        interval=0.2,
    )
    b_name = new_name("b")
    b, _ = cluster.start_worker(b_name, "-A", HELD)

    a.popen.send_signal(signal.SIGKILL)
    a.wait()
    release.touch()

    assert run.wait() == 0, run.output()
    report = report_of(run)
    assert report["status"] == "succeeded"
    assert report["result"] == "released"
    assert report["steps"] == {"hold": {"status": "succeeded", "attempts": 2}}
    # Nothing redelivered attempt 1 (it was acked): b ran the re-dispatched attempt 2 only.
    assert executions(log) == [(1, a.pid), (2, b.pid)]
    events = events_of(cluster, report["run_id"])
    succeeded = [e for e in events if e["kind"] == "step_succeeded"]
    assert [(e["step"], e["attempt"], e["data"]["worker"]) for e in succeeded] == [
        ("hold", 2, b_name)
    ]
    retrying = [e for e in events if e["kind"] == "step_retrying"]
    assert len(retrying) == 1, retrying
    assert retrying[0]["attempt"] == 1
    assert retrying[0]["data"]["error"]["type"] == "WorkerLostError"
    assert b.popen.poll() is None


def test_a_step_not_yet_acked_is_redelivered_when_its_worker_is_killed(
    cluster: Cluster, tmp_path: Path, amqp_url: str
) -> None:
    """RabbitMQ requeues a's unacked delivery of attempt 1, marked redelivered, and gives it
    to b.  Attempt 1 may have started (it had, on a), so b does not run it: it reports it
    to the coordinator and acks it; the coordinator dispatches attempt 2 once a is known to
    be gone (its heartbeats lapsed, or at once if it never reported the step), and b runs
    that.  Issue 8's invariant: a step's code starts at most once per attempt.  (Before
    issue 8, b ran attempt 1 a second time.)"""
    cluster.env.update(FAST_LEASES, AEXEC_ACK_AFTER="60")
    a, run, log, release = start_held_run(cluster, tmp_path)
    step_queue = f"{cluster.env['AEXEC_QUEUE_PREFIX']}.step.held"
    assert shared_queue_counts(amqp_url, cluster.env["AEXEC_QUEUE_PREFIX"])[step_queue] == (0, 1)
    b_name = new_name("b")
    b, _ = cluster.start_worker(b_name, "-A", HELD)

    a.popen.send_signal(signal.SIGKILL)
    a.wait()
    release.touch()

    assert run.wait() == 0, run.output()
    report = report_of(run)
    assert report["status"] == "succeeded"
    assert executions(log) == [(1, a.pid), (2, b.pid)]
    assert report["steps"] == {"hold": {"status": "succeeded", "attempts": 2}}
    events = events_of(cluster, report["run_id"])
    succeeded = [e for e in events if e["kind"] == "step_succeeded"]
    assert [(e["step"], e["attempt"], e["data"]["worker"]) for e in succeeded] == [
        ("hold", 2, b_name)
    ]
    retrying = [e for e in events if e["kind"] == "step_retrying"]
    assert [(e["attempt"], e["data"]["error"]["type"]) for e in retrying] == [
        (1, "WorkerLostError")
    ]


# -- a step longer than RabbitMQ's consumer_timeout --------------------------------------

# The broker closes a channel holding a delivery unacked for longer than consumer_timeout;
# it checks every channel_tick_interval (60 s by default, 0.5 s on the private node here).
CONSUMER_TIMEOUT_MS = 2000
TICK_MS = 500
TIMED_OUT = "delivery acknowledgement on channel"


def run_past_consumer_timeout(
    cluster: Cluster, rabbit: PrivateRabbit, tmp_path: Path, ack_after: float
) -> tuple[Process, Process, Path, int]:
    """Run ``hold`` for three consumer timeouts on the private node; returns the worker,
    the finished run, the execution log and the broker log's length before the run."""
    cluster.env.update(FAST_LEASES, AEXEC_ACK_AFTER=str(ack_after))
    log_start = rabbit.log_file.stat().st_size
    with rabbit.rabbit_env(consumer_timeout=CONSUMER_TIMEOUT_MS, channel_tick_interval=TICK_MS):
        worker, run, log, release = start_held_run(cluster, tmp_path)
        # Not synchronisation: the broker's own timer must get the chance to fire.
        time.sleep(3 * CONSUMER_TIMEOUT_MS / 1000)
        release.touch()
        assert run.wait() == 0, run.output()
    return worker, run, log, log_start


def test_a_step_longer_than_the_consumer_timeout_runs_once_on_an_open_channel(
    private: Cluster, private_rabbitmq: PrivateRabbit, tmp_path: Path
) -> None:
    worker, run, log, log_start = run_past_consumer_timeout(
        private, private_rabbitmq, tmp_path, ack_after=0.5
    )

    report = report_of(run)
    assert report["status"] == "succeeded"
    assert report["steps"] == {"hold": {"status": "succeeded", "attempts": 1}}
    assert executions(log) == [(1, worker.pid)]
    broker_log = private_rabbitmq.log_file.read_text(errors="replace")[log_start:]
    assert TIMED_OUT not in broker_log
    assert worker.popen.poll() is None


def test_without_the_early_ack_the_broker_times_the_delivery_out(
    private: Cluster, private_rabbitmq: PrivateRabbit, tmp_path: Path
) -> None:
    """The control of the test above: these broker settings do fire."""
    worker, run, log, log_start = run_past_consumer_timeout(
        private, private_rabbitmq, tmp_path, ack_after=60
    )

    broker_log = private_rabbitmq.log_file.read_text(errors="replace")[log_start:]
    assert TIMED_OUT in broker_log
    # The worker recognises the redelivery of an attempt it runs: still one execution.
    report = report_of(run)
    assert report["steps"] == {"hold": {"status": "succeeded", "attempts": 1}}
    assert executions(log) == [(1, worker.pid)]


# -- the broker restarts mid-run ---------------------------------------------------------

SWARM_STEPS = 599  # + the fan-in: 600 steps of ~20 ms, 4 at a time: ~3 s of work
FAULTS = {"stop_app/start_app": 2, "close_all_connections": 4}  # at most, while the run lasts


def swarm_lines(log: Path) -> list[tuple[str, int]]:
    """``(step key, attempt)`` of every execution of a ``swarm`` step, in order."""
    if not log.exists():
        return []
    return [(k, int(a)) for k, a in (line.split() for line in log.read_text().splitlines())]


@pytest.mark.parametrize("fault", FAULTS)
def test_a_run_survives_broker_faults_mid_run_and_records_each_step_once(
    private: Cluster, private_rabbitmq: PrivateRabbit, tmp_path: Path, fault: str
) -> None:
    log = tmp_path / "executions"
    worker, _ = private.start_worker(new_name("w"), "-A", SWARM, "-c", "4")
    run = private.start(
        "run", SWARM, "-p", f"n={SWARM_STEPS}", "-p", f"log={log}",
        "--broker", private.broker, "--json",
    )  # fmt: skip
    # Fault after fault while completions stream in, each once the run has made progress
    # since the one before (so every fault finds work in flight).  The first one finds most
    # of the run still to do; the run may finish before the last ones.
    progress: list[int] = []
    while len(progress) < FAULTS[fault] and run.popen.poll() is None:
        target = len(swarm_lines(log)) + 40
        wait_until(
            lambda target=target: len(swarm_lines(log)) >= target or run.popen.poll() is not None,
            "the run makes progress",
            worker,
        )
        progress.append(len(swarm_lines(log)))
        if fault == "close_all_connections":
            private_rabbitmq.close_all_connections()
        else:
            private_rabbitmq.stop_app()
            private_rabbitmq.start_app()

    assert run.wait(timeout=60) == 0, run.output() + worker.output()
    report = report_of(run)
    assert report["status"] == "succeeded"
    assert report["result"] == sum(range(SWARM_STEPS))
    assert len(report["steps"]) == SWARM_STEPS + 1
    assert {s["status"] for s in report["steps"].values()} == {"succeeded"}
    executed = swarm_lines(log)
    assert progress[0] < SWARM_STEPS / 2  # the first fault hit the run early
    assert len(executed) > SWARM_STEPS  # and the worker served it after the fault too
    events = events_of(private, report["run_id"])
    successes = Counter(e["step"] for e in events if e["kind"] == "step_succeeded")
    assert set(successes) == set(report["steps"])
    assert max(successes.values()) == 1, successes.most_common(3)  # exactly once each
    for e in events:
        if e["kind"] == "step_succeeded":
            assert (e["step"], e["attempt"]) in executed
            assert report["steps"][e["step"]]["attempts"] == e["attempt"]
    assert worker.popen.poll() is None


# -- an unreachable broker at start ----------------------------------------------------

UNREACHABLE_RUNS = {
    "run": ["run", UNSERVED],
    "run --remote": ["run", UNSERVED, "--remote"],
    "coordinator": ["coordinator"],
}


@pytest.mark.parametrize("argv", UNREACHABLE_RUNS.values(), ids=UNREACHABLE_RUNS.keys())
def test_an_unreachable_broker_stops_run_and_coordinator_at_once(
    tmp_path: Path, argv: list[str]
) -> None:
    port = closed_port()
    started = time.monotonic()
    proc = subprocess.run(
        command(*argv, "--broker", f"amqp://guest:pw-S3cret@127.0.0.1:{port}/"),
        env=make_env(tmp_path / "home"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert time.monotonic() - started < 10.0
    # Bad input: exit 2, one line and no traceback, the broker named without its password.
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("aexec: error: ")
    assert f"127.0.0.1:{port}" in proc.stderr
    assert "S3cret" not in proc.stderr


# -- a coordinator service and remote clients ------------------------------------------


def test_a_coordinator_service_runs_remote_submissions_and_shows_unserved_steps_queued(
    cluster: Cluster, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'coordinator.db'}"
    coordinator = cluster.start("coordinator", "-v", "--broker", cluster.broker, "--store", store)
    coordinator.wait_for_line("connected to RabbitMQ")
    cluster.start_worker(new_name("w"), "-A", TEXT_STEPS)

    def remote_run() -> dict[str, Any]:
        proc = cluster.aexec(
            "run", REMOTE, "-p", 'words=["a", "bc"]', "--remote", "--broker", cluster.broker,
            "--json",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr + "".join(coordinator.err)
        report: dict[str, Any] = json.loads(proc.stdout)
        assert report["status"] == "succeeded"
        assert report["result"]["measured"]["length"] == 4
        return report

    remote_run()

    client = cluster.start("run", UNSERVED, "--remote", "--broker", cluster.broker, "--json")

    def shown() -> dict[str, Any] | None:
        listed = cluster.aexec("runs", "list", "--json", "--store", store)
        assert listed.returncode == 0, listed.stderr
        runs = [json.loads(line) for line in listed.stdout.splitlines()]
        waiting = [r for r in runs if r["pipeline"] == "unserved"]
        if not waiting:
            return None
        proc = cluster.aexec("runs", "show", waiting[0]["run_id"], "--json", "--store", store)
        assert proc.returncode == 0, proc.stderr
        report: dict[str, Any] = json.loads(proc.stdout)
        return report

    wait_until(
        lambda: (
            (r := shown()) is not None and r["steps"]["nobody_serves_this"]["status"] == "queued"
        ),
        "the unserved step shows queued",
        client,
        coordinator,
        interval=0.1,
    )
    waiting = shown()
    assert waiting is not None
    assert waiting["status"] in ("pending", "running")
    assert waiting["steps"] == {"nobody_serves_this": {"status": "queued", "attempts": 1}}
    assert client.popen.poll() is None  # the client waits: nothing ended the run

    client.popen.send_signal(signal.SIGINT)  # Ctrl-C: the client cancels its run and exits
    assert client.wait() == 130, client.output()
    wait_until(
        lambda: (r := shown()) is not None and r["status"] == "cancelled",
        "the coordinator cancels the abandoned run",
        coordinator,
        interval=0.1,
    )

    remote_run()  # the coordinator still serves
    assert coordinator.popen.poll() is None
