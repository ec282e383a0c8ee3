"""An S3-compatible server for the test run: moto's server mode, in its own process.

``s3_server`` (session) starts ``python -m moto.server`` on a free port of 127.0.0.1 and
yields its endpoint URL; ``s3_env`` points the AWS environment variables at it with test
credentials; ``s3_bucket`` creates a bucket with a random name and empties and removes it
afterwards.  When moto cannot start, the test skips locally and fails under ``CI=true``.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HOST = "127.0.0.1"
START_TIMEOUT = 30.0  # seconds for moto to answer on its port
STOP_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)


def _start_moto(log_path: Path) -> tuple[subprocess.Popen[bytes], str] | str:
    """The running server and its endpoint, or the reason it could not start."""
    from tests.plugins.services import port_open  # late: ``-p tests.plugins.s3`` must work

    port = _free_port()
    with log_path.open("wb") as log:
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            return f"cannot start moto server: {exc}"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"moto server exited with {process.returncode}: {_log_tail(log_path)}"
        if port_open(HOST, port, timeout=0.5):
            return process, f"http://{HOST}:{port}"
        time.sleep(0.05)  # poll interval of a bounded wait, not synchronisation
    _stop(process)
    return f"moto server did not answer on {HOST}:{port} within {START_TIMEOUT:.0f}s"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL (``http://127.0.0.1:PORT``) of a moto S3 server for this test run."""
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    started = _start_moto(log_path)
    if isinstance(started, str):
        from tests.plugins.services import service_unavailable

        service_unavailable(started)
        raise AssertionError("unreachable")  # service_unavailable always raises
    process, endpoint = started
    try:
        yield endpoint
    finally:
        _stop(process)


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """AWS environment variables aimed at ``s3_server`` with test credentials; its URL."""
    for name in (
        "AWS_ENDPOINT_URL_S3",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_DEFAULT_REGION",
    ):
        monkeypatch.delenv(name, raising=False)
    # Keep a developer's ~/.aws out of the tests.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config-absent"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials-absent"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    return s3_server


def s3_client(endpoint: str) -> Any:
    """A synchronous boto3 client for test set-up and inspection (not the code under test)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(
            connect_timeout=5,
            read_timeout=30,
            retries={"total_max_attempts": 2},
            s3={"addressing_style": "path"},
        ),
    )


@pytest.fixture
def s3_bucket(s3_env: str) -> Iterator[str]:
    """A new, empty bucket with a random name on ``s3_server``; removed afterwards."""
    client = s3_client(s3_env)
    name = f"aexec-test-{secrets.token_hex(6)}"
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        _remove_bucket(client, name)
        client.close()


def _remove_bucket(client: Any, name: str) -> None:
    for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
        client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=name, Delete={"Objects": keys})
    client.delete_bucket(Bucket=name)


__all__ = ["s3_bucket", "s3_client", "s3_env", "s3_server"]
