"""Credentials never appear in what aexec prints: real ``worker``, ``coordinator``, ``run
--json``, ``runs`` and ``dlq`` processes, all at ``-vv`` (libraries below aexec log the URLs
they were given at DEBUG), started with a password in every form a URL carries one
(user information, ``?password=``, ``sslpassword=``) and a signing secret, on success and
on failure.

The broker is a private RabbitMQ node with a user of its own (the shared broker's
configuration is never changed); PostgreSQL trusts local connections, so the passwords in
the store URL are carried and never checked.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.e2e.cluster import Cluster, Process
from tests.plugins.postgres import with_address

if TYPE_CHECKING:
    from tests.plugins.private_rabbitmq import PrivateRabbit

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq, pytest.mark.postgres]

ARITH = str(Path(__file__).resolve().parent / "pipelines" / "arith.py")

SECRETS = {
    "broker password": "brokerPw-5f1e9c",
    "broker query password": "brokerQueryPw-0b7d",
    "store password": "storePw-91ab2e",
    "store query password": "storeQueryPw-c3d4",
    "store ssl password": "storeSslPw-8e6a",
    "signing secret": "signingSecret-2a4f77",
}


@pytest.fixture
def cluster(tmp_path: Path, private_rabbitmq: PrivateRabbit) -> Iterator[Cluster]:
    user = f"aexec-{uuid.uuid4().hex[:8]}"
    private_rabbitmq.ctl("add_user", user, SECRETS["broker password"])
    private_rabbitmq.ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
    broker = (
        f"amqp://{user}:{SECRETS['broker password']}@127.0.0.1:{private_rabbitmq.port}/"
        f"?password={SECRETS['broker query password']}"
    )
    home = tmp_path / "home"
    home.mkdir()
    cluster = Cluster(home, f"creds-{uuid.uuid4().hex[:8]}", broker)
    try:
        yield cluster
    finally:
        for process in cluster.processes:
            process.stop()
        private_rabbitmq.ctl("delete_user", user)


def store_url(dsn: str) -> str:
    base = with_address(dsn, "127.0.0.1", 5432).replace("postgres@", "postgres:{pw}@", 1)
    return (
        base.format(pw=SECRETS["store password"])
        + f"?password={SECRETS['store query password']}"
        + f"&sslpassword={SECRETS['store ssl password']}"
    )


def assert_no_credentials(where: str, text: str) -> None:
    leaked = [name for name, value in SECRETS.items() if value in text]
    assert not leaked, f"{where} shows the {', '.join(leaked)}:\n{text}"


def test_no_process_shows_a_credential_in_any_form(cluster: Cluster, postgres_dsn: str) -> None:
    store = store_url(postgres_dsn)
    cluster.env.update(
        {
            "AEXEC_BROKER": cluster.broker,
            "AEXEC_STORE": store,
            "AEXEC_SECRET": SECRETS["signing secret"],
        }
    )
    coordinator = cluster.start("coordinator", "-vv", "--store", store)
    coordinator.wait_for_line("connected to RabbitMQ")
    worker = cluster.start("worker", "start", "-vv", "-n", "w1", "-A", ARITH)
    worker.wait_for_line("worker w1 ready:")

    run = cluster.aexec("run", ARITH, "-p", "n=5", "--remote", "--json", "-vv")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["result"] == 30
    outputs = {"run --json": run.stdout + run.stderr}
    for name, args in {
        "runs list": ["runs", "list", "--json"],
        "runs show": ["runs", "show", report["run_id"], "--json"],
        "runs logs": ["runs", "logs", report["run_id"], "--json"],
        "dlq list": ["dlq", "list", "--json"],
        "worker list": ["worker", "list", "--json"],
    }.items():
        proc = cluster.aexec(*args, "-vv")
        assert proc.returncode == 0, proc.stderr
        outputs[name] = proc.stdout + proc.stderr
    assert '"kind": "step_succeeded"' in outputs["runs logs"]  # the events were read

    for process in (worker, coordinator):
        process.popen.terminate()
        assert process.wait() == 0, process.output()
    outputs["worker"] = process_output(worker)
    outputs["coordinator"] = process_output(coordinator)
    # -v logs the store URL, redacted: the test looked where the credentials would be.
    assert "store postgresql://postgres:***@127.0.0.1:5432/" in outputs["coordinator"]
    assert "password=***" in outputs["coordinator"]
    for where, text in outputs.items():
        assert_no_credentials(where, text)


def test_failures_name_the_backend_without_its_credentials(cluster: Cluster) -> None:
    closed = "127.0.0.1:9"  # discard: nothing listens there
    broker = cluster.broker.replace(cluster.broker.split("@")[1].split("/")[0], closed)
    store = (
        f"postgresql://postgres:{SECRETS['store password']}@{closed}/aexec"
        f"?password={SECRETS['store query password']}"
    )
    cluster.env["AEXEC_SECRET"] = SECRETS["signing secret"]
    for args in (
        ["run", ARITH, "-p", "n=2", "--json", "--broker", broker],
        ["runs", "list", "--store", store],
        ["coordinator", "--broker", broker, "--store", store],
        ["worker", "start", "-A", ARITH, "--broker", broker],
        ["dlq", "list", "--broker", broker],
        ["run", ARITH, "-p", "n=2", "--store", f"mysql://root:{SECRETS['store password']}@db/x"],
    ):
        proc = cluster.aexec(*args, "-vv")
        assert proc.returncode != 0, proc.stdout + proc.stderr
        assert "error:" in proc.stderr
        assert_no_credentials(" ".join(args[:2]), proc.stdout + proc.stderr)


def process_output(process: Process) -> str:
    return "".join(process.out) + "".join(process.err)
