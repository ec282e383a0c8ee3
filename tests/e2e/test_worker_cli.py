"""``aexec worker`` and ``aexec coordinator`` as users run them: real processes over RabbitMQ.

Every test gets its own ``AEXEC_HOME`` and a random queue prefix (``AEXEC_QUEUE_PREFIX``),
so tests never see each other's queues or runs.  Workers are started with ``-v`` and the
tests wait for the line they log once they consume their queues (``worker NAME ready:
...``), never for a fixed time.  Every process a test starts is killed, by its pid, in a
``finally``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.cluster import (
    TIMEOUT,
    Cluster,
    command,
    make_env,
    wait_for_file,
)

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq]

PIPELINES = Path(__file__).resolve().parent / "pipelines"
ARITH = str(PIPELINES / "arith.py")
TEXT_STEPS = str(PIPELINES / "text_steps.py")
REMOTE = str(PIPELINES / "remote.py")
UNKNOWN = str(PIPELINES / "unknown.py")
GATED = str(PIPELINES / "gated.py")

UNREACHABLE = "amqp://guest:secret@127.0.0.1:1/"


def worker_name() -> str:
    return f"w-{uuid.uuid4().hex[:6]}"


def assert_bad_input(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 2 with exactly one line on stderr, ``aexec: error: ...``, and no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("aexec: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# -- serving -------------------------------------------------------------------------------


def test_a_worker_serves_the_steps_of_every_module_it_loads(cluster: Cluster) -> None:
    name = worker_name()
    worker, ready = cluster.start_worker(name, "-A", ARITH, "-A", TEXT_STEPS)
    assert "queues default,text;" in ready
    assert "steps measure,shout,square,total" in ready

    code, report = cluster.run(ARITH, "-p", "n=4", "-p", "offset=1")

    assert code == 0, report
    assert report["status"] == "succeeded"
    assert report["result"] == 0 + 1 + 4 + 9 + 1
    # The run was recorded in the store under AEXEC_HOME: read it back without a broker.
    shown = cluster.aexec("runs", "show", report["run_id"], "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == report
    assert worker.popen.poll() is None


def test_remote_steps_run_on_a_worker_started_from_another_file(cluster: Cluster) -> None:
    cluster.start_worker(worker_name(), "-A", TEXT_STEPS)

    code, report = cluster.run(REMOTE, "-p", 'words=["a", "bc"]')

    assert code == 0, report
    # bytes (base64 in JSON) and a datetime crossed msgpack both ways: `measure` checks
    # their types on the worker, after they came back through the coordinator.
    assert report["result"] == {
        "shouted": {
            "text": "A BC",
            "blob": "/wEA",  # b"\xff\x01\x00"
            "pair": [2, 3],
            "when": "2024-05-01T12:30:00+00:00",
        },
        "measured": {"length": 4, "first_byte": 255, "blob": "/wEA"},
    }


def test_a_step_no_worker_knows_fails_and_the_worker_keeps_serving(cluster: Cluster) -> None:
    name = worker_name()
    worker, _ = cluster.start_worker(name, "-A", TEXT_STEPS)

    code, report = cluster.run(UNKNOWN)

    assert code == 1, report
    assert report["status"] == "failed"
    assert report["steps"]["no_such_step"] == {"status": "failed", "attempts": 1}
    assert report["steps"]["shout"]["status"] == "succeeded"
    assert "UnknownStepError" in report["error"]
    assert f"worker {name} does not serve step 'no_such_step'" in report["error"]
    code, report = cluster.run(REMOTE, "-p", 'words=["still", "here"]')
    assert code == 0, report
    assert worker.popen.poll() is None


# -- control ---------------------------------------------------------------------------


def test_worker_list_shows_a_running_worker_and_terminate_stops_it(cluster: Cluster) -> None:
    name = worker_name()
    worker, _ = cluster.start_worker(name, "-A", TEXT_STEPS, "-Q", "text", "-c", "4")

    listed = [w for w in cluster.workers() if w["name"] == name]
    assert len(listed) == 1, listed
    assert listed[0]["queues"] == ["text"]
    assert listed[0]["in_flight"] == 0
    assert listed[0]["pid"] == worker.pid
    assert 0 <= listed[0]["heartbeat_age"] < 10
    table = cluster.aexec("worker", "list", "--broker", cluster.broker)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == [
        "NAME", "HOST", "PID", "QUEUES", "STEPS", "IN-FLIGHT", "HEARTBEAT", "AGE"
    ]  # fmt: skip
    assert any(line.split()[:4] == [name, listed[0]["host"], str(worker.pid), "text"]
               for line in table.stdout.splitlines()[1:])  # fmt: skip

    asked = cluster.aexec("worker", "terminate", name, "--broker", cluster.broker)

    assert asked.returncode == 0, asked.stderr
    assert name in asked.stdout
    assert worker.wait() == 0, worker.output()
    assert f"worker {name} asked to terminate" in "".join(worker.err)
    assert [w for w in cluster.workers() if w["name"] == name] == []


def test_terminate_all_stops_every_worker(cluster: Cluster) -> None:
    workers = [cluster.start_worker(worker_name(), "-A", TEXT_STEPS)[0] for _ in range(2)]

    asked = cluster.aexec("worker", "terminate", "--all", "--broker", cluster.broker)

    assert asked.returncode == 0, asked.stderr
    assert "every worker" in asked.stdout
    for worker in workers:
        assert worker.wait() == 0, worker.output()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_lets_the_running_step_finish_and_deliver_its_completion(
    cluster: Cluster, tmp_path: Path, signum: signal.Signals
) -> None:
    worker, _ = cluster.start_worker(worker_name(), "-A", GATED)
    marker, release = tmp_path / "started", tmp_path / "release"
    run = cluster.start(
        "run", GATED, "-p", f"marker={marker}", "-p", f"release={release}",
        "--broker", cluster.broker, "--json",
    )  # fmt: skip
    wait_for_file(marker, run)

    worker.popen.send_signal(signum)
    worker.wait_for_line(f"{signum.name}: stopping")
    assert worker.popen.poll() is None  # the step holds it: it cannot end before `release`
    release.touch()

    assert worker.wait() == 0, worker.output()
    assert run.wait() == 0, run.output()
    report = json.loads("".join(run.out))
    assert report["result"] == "released"
    assert report["steps"] == {"wait_for_release": {"status": "succeeded", "attempts": 1}}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_coordinator_exits_0_on_a_signal(cluster: Cluster, signum: signal.Signals) -> None:
    coordinator = cluster.start("coordinator", "-v", "--broker", cluster.broker)
    coordinator.wait_for_line("connected to RabbitMQ")

    coordinator.popen.send_signal(signum)

    assert coordinator.wait() == 0, coordinator.output()
    assert "coordinator stopped" in "".join(coordinator.err)


# -- bad input -------------------------------------------------------------------------

# Commands that must fail before reaching a broker: the broker given is unreachable, so a
# command that wrongly went on would fail differently instead of serving forever.
BAD_INPUT = {
    "no -A": (["worker", "start"], "-A"),
    "missing file": (["worker", "start", "-A", "missing.py", "--broker", UNREACHABLE],
                     "no such file: missing.py"),
    "missing module": (["worker", "start", "-A", "no_such_module_x", "--broker", UNREACHABLE],
                       "no module named 'no_such_module_x'"),
    "no steps": (["worker", "start", "-A", REMOTE, "--broker", UNREACHABLE], "no step to serve"),
    "no broker": (["worker", "start", "-A", ARITH],
                  "worker start needs a broker: pass --broker amqp://... or set AEXEC_BROKER"),
    "memory broker": (["worker", "start", "-A", ARITH, "--broker", "memory://"],
                      "needs a broker"),
    "unsupported URL": (["worker", "start", "-A", ARITH, "--broker", "redis://localhost/"],
                        "unsupported broker URL"),
    "unknown option": (["worker", "start", "-A", ARITH, "--bogus"], "--bogus"),
    "concurrency 0": (["worker", "start", "-A", ARITH, "-c", "0", "--broker", UNREACHABLE],
                      "concurrency"),
    "concurrency text": (["worker", "start", "-A", ARITH, "-c", "many"], "invalid int"),
    "unknown pool": (["worker", "start", "-A", ARITH, "--pool", "fork"], "invalid choice"),
    "empty -Q": (["worker", "start", "-A", ARITH, "-Q", ",", "--broker", UNREACHABLE], "-Q"),
    "no subcommand": (["worker"], "required"),
    "list without broker": (["worker", "list"], "worker list needs a broker"),
    "list --wait 0": (["worker", "list", "--wait", "0", "--broker", UNREACHABLE], "--wait"),
    "terminate whom": (["worker", "terminate", "--broker", UNREACHABLE], "--all"),
    "terminate both": (["worker", "terminate", "w1", "--all", "--broker", UNREACHABLE],
                       "--all"),
    "terminate without broker": (["worker", "terminate", "--all"], "needs a broker"),
    "coordinator without broker": (["coordinator"], "coordinator needs a broker"),
    "coordinator memory broker": (["coordinator", "--broker", "memory://"], "needs a broker"),
    "coordinator bad store": (["coordinator", "--broker", UNREACHABLE, "--store", "mysql://x/"],
                              "unsupported store URL"),
}  # fmt: skip


@pytest.mark.parametrize(("argv", "fragment"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, argv: list[str], fragment: str) -> None:
    proc = subprocess.run(
        command(*argv),
        env=make_env(tmp_path / "home"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert_bad_input(proc, fragment)


UNREACHABLE_COMMANDS = {
    "worker start": ["worker", "start", "-A", ARITH],
    "worker list": ["worker", "list"],
    "worker terminate": ["worker", "terminate", "--all"],
    "coordinator": ["coordinator"],
}


@pytest.mark.parametrize("argv", UNREACHABLE_COMMANDS.values(), ids=UNREACHABLE_COMMANDS.keys())
def test_an_unreachable_broker_is_one_line_without_the_password(
    tmp_path: Path, argv: list[str]
) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        command(*argv, "--broker", UNREACHABLE),
        env=make_env(tmp_path / "home"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert time.monotonic() - started < 10.0
    assert_bad_input(proc, "127.0.0.1:1")
    assert "secret" not in proc.stderr
