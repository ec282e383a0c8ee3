"""Signed messages over RabbitMQ with real processes: a coordinator and workers sharing
``AEXEC_SECRET`` run pipelines; unsigned and wrongly keyed step messages published straight
to the broker are dead-lettered (``aexec dlq list`` says why) and never run; a worker with
another secret runs nothing, and once a worker with the right one serves, ``aexec dlq
replay`` sends the refused step back and the run finishes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from aexec import codec, messages
from aexec.transport.signed import derive_key, sign
from tests.e2e.cluster import TIMEOUT, Cluster, Process, command, wait_for_file

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq]

LEDGER = str(Path(__file__).resolve().parent / "pipelines" / "ledger.py")
HELD = str(Path(__file__).resolve().parent / "pipelines" / "held.py")
SECRET = "e2e-signing-secret"


def dead_letters(cluster: Cluster) -> list[dict[str, Any]]:
    proc = cluster.aexec("dlq", "list", "--json", "--broker", cluster.broker)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def wait_for_dead_letters(cluster: Cluster, count: int, *watched: Process) -> list[dict[str, Any]]:
    deadline = time.monotonic() + TIMEOUT
    while len(letters := dead_letters(cluster)) < count:
        exited = [p.output() for p in watched if p.popen.poll() is not None]
        assert not exited and time.monotonic() < deadline, (letters, exited)
        time.sleep(0.1)
    return letters


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def publish_raw(broker: str, queue: str, bodies: list[bytes]) -> None:
    """Publish straight to the broker, as someone without the secret could."""
    connection = await aio_pika.connect(broker, timeout=10)
    async with connection:
        channel = await connection.channel()
        for body in bodies:
            await channel.default_exchange.publish(aio_pika.Message(body), queue)


async def test_signed_peers_run_a_pipeline_and_dead_letter_forged_step_messages(
    cluster: Cluster, amqp_prefix: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    cluster.env["AEXEC_SECRET"] = SECRET
    cluster.start_worker("w1", "-A", LEDGER)
    call = codec.encode([[str(ledger), "forged"], {}])
    forged = messages.StepMessage("f" * 32, "record", 1, "record", call, [], None, "reply.x")
    await publish_raw(
        cluster.broker,
        f"{amqp_prefix}.step.default",
        [forged.encode(), sign(derive_key("a guess"), "q:step.default", forged.encode())],
    )
    code, report = cluster.run(LEDGER, "-p", f"ledger={ledger}", "-p", "tag=legit")
    assert (code, report["result"]) == (0, "legit")
    letters = wait_for_dead_letters(cluster, 2)
    assert sorted((d["reason"], d["queue"], d["kind"], d["run_id"]) for d in letters) == [
        ("bad signature", "step.default", "step", "f" * 32),
        ("unsigned message", "step.default", "step", "f" * 32),
    ]
    assert lines(ledger) == ["legit"]


def test_a_worker_with_another_secret_runs_nothing_until_replayed_to_a_right_one(
    cluster: Cluster, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    wrong = Process(
        command("worker", "start", "-v", "-n", "wrong", "-A", LEDGER, "--broker", cluster.broker),
        {**cluster.env, "AEXEC_SECRET": "not the secret"},
        cluster.home.parent,
    )
    cluster.processes.append(wrong)
    wrong.wait_for_line("worker wrong ready:")
    cluster.env["AEXEC_SECRET"] = SECRET
    run = cluster.start(
        "run", LEDGER, "-p", f"ledger={ledger}", "-p", "tag=legit", "--json",
        "--broker", cluster.broker,
    )  # fmt: skip
    [letter] = wait_for_dead_letters(cluster, 1, run, wrong)
    assert (letter["reason"], letter["kind"], letter["step"]) == ("bad signature", "step", "record")
    wrong.wait_for_line("bad signature")  # the worker says why it refused the message
    wrong.popen.terminate()
    assert wrong.wait() == 0
    assert lines(ledger) == [] and run.popen.poll() is None

    table = cluster.aexec("dlq", "list", "--broker", cluster.broker)
    [header, row] = table.stdout.splitlines()
    assert header.split() == ["ID", "AGE", "QUEUE", "KIND", "RUN", "STEP", "REASON"]
    assert row.startswith(letter["id"]) and row.endswith("bad signature")
    usage = cluster.aexec("dlq", "replay", "--broker", cluster.broker)
    assert usage.returncode == 2 and "--all" in usage.stderr

    cluster.start_worker("right", "-A", LEDGER)
    replay = cluster.aexec("dlq", "replay", letter["id"], "--broker", cluster.broker)
    assert replay.returncode == 0, replay.stderr
    assert replay.stdout == f"replayed {letter['id']} to step.default\n"
    assert run.wait() == 0, run.output()
    assert json.loads("".join(run.out))["status"] == "succeeded"
    assert lines(ledger) == ["legit"]
    assert dead_letters(cluster) == []


def test_a_forged_completion_is_refused_and_recorded_on_the_run_it_names(
    cluster: Cluster, amqp_prefix: str, tmp_path: Path
) -> None:
    """A coordinator service with a secret: an unsigned completion for a step it is waiting
    for is dead-lettered, the run gets a ``message_rejected`` event, and the step's real
    output, not the forged one, is the run's result."""
    cluster.env["AEXEC_SECRET"] = SECRET
    coordinator = cluster.start("coordinator", "-v", "--broker", cluster.broker)
    coordinator.wait_for_line("connected to RabbitMQ")
    cluster.start_worker("w1", "-A", HELD)
    log, release = tmp_path / "held.log", tmp_path / "release"
    run = cluster.start(
        "run", HELD, "-p", f"log={log}", "-p", f"release={release}", "--remote", "--json",
        "--broker", cluster.broker,
    )  # fmt: skip
    wait_for_file(log, run)
    [listed] = [
        json.loads(line) for line in cluster.aexec("runs", "list", "--json").stdout.splitlines()
    ]
    run_id = listed["run_id"]
    [started] = [e for e in run_events(cluster, run_id) if e["kind"] == "run_started"]
    reply_queue = f"{amqp_prefix}.reply.{started['data']['coordinator']}"
    forged = messages.Completion(run_id, "hold", 1, codec.encode("forged"), None, "evil", 0, 0)
    asyncio.run(publish_raw(cluster.broker, reply_queue, [forged.encode()]))

    deadline = time.monotonic() + TIMEOUT
    while not (
        rejected := [e for e in run_events(cluster, run_id) if e["kind"] == "message_rejected"]
    ):
        assert time.monotonic() < deadline, coordinator.output()
        time.sleep(0.1)
    assert (rejected[0]["step"], rejected[0]["attempt"]) == ("hold", 1)
    assert rejected[0]["data"]["reason"] == "unsigned message"
    assert rejected[0]["data"]["message"] == "done"
    [letter] = dead_letters(cluster)
    assert (letter["reason"], letter["kind"], letter["run_id"]) == (
        "unsigned message",
        "done",
        run_id,
    )
    release.touch()
    assert run.wait() == 0, run.output()
    assert json.loads("".join(run.out))["result"] == "released"


def run_events(cluster: Cluster, run_id: str) -> list[dict[str, Any]]:
    proc = cluster.aexec("runs", "logs", run_id, "--json")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]
