"""Webhooks as a user configures them: ``webhooks:`` in aexec.yaml, ``aexec run`` of a
failing pipeline, a real HTTP endpoint receiving the signed call, and the delivery shown by
``runs show`` and ``runs logs``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from aexec.webhooks import SIGNATURE_HEADER, verify
from tests.e2e.cluster import Cluster
from tests.e2e.test_cli import FAILING, Result, _command, _env, aexec
from tests.plugins.webhooks import Receiver

pytestmark = pytest.mark.e2e


async def run_cli(home: Path, *args: str) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *_command(*args),
        cwd=home.parent,
        env=_env(home),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def test_aexec_run_delivers_a_signed_webhook_on_failure_and_runs_show_it(
    tmp_path: Path, receiver: Receiver
) -> None:
    home = tmp_path / "home"
    config = tmp_path / "aexec.yaml"
    config.write_text(
        f"webhooks:\n  - url: {receiver.url}\n    events: [run_failed]\n    secret: whsec-e2e\n"
    )
    result = await run_cli(home, "run", FAILING, "--json", "-c", str(config))
    assert result.code == 1, result
    run_id = result.json()["run_id"]
    [call] = await receiver.wait_for(1)
    assert verify("whsec-e2e", call.body, call.headers[SIGNATURE_HEADER])
    assert json.loads(call.body)["run_id"] == run_id
    assert "whsec-e2e" not in result.out + result.err

    shown = await asyncio.to_thread(aexec, home, "runs", "show", run_id, "--json")
    assert shown.code == 0, shown
    [delivery] = shown.json()["webhooks"]
    assert (delivery["url"], delivery["event"], delivery["status"], delivery["attempts"]) == (
        receiver.url,
        "run_failed",
        "delivered",
        1,
    )
    table = await asyncio.to_thread(aexec, home, "runs", "show", run_id)
    assert "WEBHOOK" in table.out and "delivered" in table.out
    logs = await asyncio.to_thread(aexec, home, "runs", "logs", run_id)
    last = logs.out.splitlines()[-1].split()
    assert last[1:4] == ["webhook_delivered", "run_failed", "#1"]
    assert last[4] == receiver.url and "HTTP 200" in logs.out.splitlines()[-1]
    logged = await asyncio.to_thread(aexec, home, "runs", "logs", run_id, "--json")
    assert logged.json_lines()[-1]["kind"] == "webhook"


def test_a_bad_webhook_in_aexec_yaml_is_a_one_line_error(tmp_path: Path) -> None:
    from tests.e2e.test_cli import assert_bad_input

    config = tmp_path / "aexec.yaml"
    config.write_text("webhooks:\n  - url: http://h/x\n    events: [run_exploded]\n    secret: s\n")
    assert_bad_input(
        aexec(tmp_path / "home", "run", FAILING, "-c", str(config)),
        "webhooks[0].events: unknown event 'run_exploded'",
    )


@pytest.mark.rabbitmq
@pytest.mark.postgres
async def test_a_coordinator_killed_mid_delivery_leaves_it_to_the_next_which_delivers_it_once(
    tmp_path: Path, receiver: Receiver, cluster: Cluster, postgres_dsn: str
) -> None:
    receiver.answers = ["hang"]  # the first call never gets an answer
    config = tmp_path / "aexec.yaml"
    config.write_text(
        f"webhooks:\n  - url: {receiver.url}\n    events: [run_failed]\n"
        "    secret: whsec-e2e\n    timeout: 2\n"
    )
    backends = ("--broker", cluster.broker, "--store", postgres_dsn)
    service = ("coordinator", "-v", "-c", str(config), "--metrics-port", "0", *backends)
    await asyncio.to_thread(cluster.start_worker, "w1", "-A", FAILING)
    first = cluster.start(*service)
    ran = await asyncio.to_thread(cluster.aexec, "run", FAILING, "--remote", "--json", *backends)
    assert ran.returncode == 1, ran.stderr
    run_id = json.loads(ran.stdout)["run_id"]
    await receiver.wait_for(1, hanging=1)
    first.popen.kill()  # SIGKILL while the endpoint holds the call
    await asyncio.to_thread(first.wait)

    cluster.start(*service)  # takes the delivery over once the dead one's lease ends
    calls = await receiver.wait_for(2)
    assert calls[0].headers["Aexec-Delivery"] == calls[1].headers["Aexec-Delivery"]
    assert verify("whsec-e2e", calls[1].body, calls[1].headers[SIGNATURE_HEADER])
    shown = await asyncio.to_thread(
        cluster.aexec, "runs", "show", run_id, "--json", "--store", postgres_dsn
    )
    [delivery] = json.loads(shown.stdout)["webhooks"]
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 1)
    assert len(receiver.calls) == 2
