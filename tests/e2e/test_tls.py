"""TLS to the backends: ``amqps://`` to a private RabbitMQ node with a TLS listener whose
certificate the session's own CA signed (``cafile=`` in the URL names the CA, as aio-pika
reads it); a CA that did not sign it fails with a one-line error.  Real processes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest

from tests.e2e.cluster import Cluster
from tests.plugins.tls import TlsFiles

if TYPE_CHECKING:
    from tests.plugins.private_rabbitmq import PrivateRabbit

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq]

ARITH = str(Path(__file__).resolve().parent / "pipelines" / "arith.py")


def amqps(rabbit: PrivateRabbit, ca: Path) -> str:
    return f"{rabbit.tls_url}?cafile={quote(str(ca), safe='')}"


@pytest.fixture
def tls_cluster(tmp_path: Path, private_rabbitmq_tls: PrivateRabbit) -> Iterator[Cluster]:
    home = tmp_path / "home"
    home.mkdir()
    cluster = Cluster(home, f"tls-{uuid.uuid4().hex[:8]}", private_rabbitmq_tls.tls_url)
    try:
        yield cluster
    finally:
        for process in cluster.processes:
            process.stop()


def test_a_run_over_amqps_succeeds_with_the_ca_that_signed_the_broker(
    tls_cluster: Cluster, private_rabbitmq_tls: PrivateRabbit, tls_files: TlsFiles
) -> None:
    tls_cluster.broker = amqps(private_rabbitmq_tls, tls_files.ca)
    worker, _ = tls_cluster.start_worker("tls-w1", "-A", ARITH)
    code, report = tls_cluster.run(ARITH, "-p", "n=10")
    assert (code, report["status"], report["result"]) == (0, "succeeded", 285), report
    listed = tls_cluster.workers()
    assert [w["name"] for w in listed] == ["tls-w1"]
    worker.popen.terminate()
    assert worker.wait() == 0, worker.output()
    connected = [line for line in worker.err if "connected to RabbitMQ at" in line]
    assert connected and f"amqps://127.0.0.1:{private_rabbitmq_tls.tls_port}/" in connected[0]


@pytest.mark.parametrize("command", [["run", ARITH, "-p", "n=2"], ["worker", "start", "-A", ARITH]])
def test_a_ca_that_did_not_sign_the_broker_fails_with_one_line(
    tls_cluster: Cluster,
    private_rabbitmq_tls: PrivateRabbit,
    tls_files: TlsFiles,
    command: list[str],
) -> None:
    broker = amqps(private_rabbitmq_tls, tls_files.other_ca)
    proc = tls_cluster.aexec(*command, "--broker", broker)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith(
        f"aexec: error: cannot connect to RabbitMQ at amqps://127.0.0.1:"
        f"{private_rabbitmq_tls.tls_port}/: "
    )
    assert "CERTIFICATE_VERIFY_FAILED" in line or "certificate verify failed" in line
    assert json.dumps(line)  # one printable line, no traceback
