"""RabbitMQ fixtures: the broker URL (skip locally / fail under CI when absent) and a random
queue prefix per test whose queues are deleted afterwards.

The broker is ``AEXEC_TEST_AMQP_URL`` or ``amqp://guest:guest@127.0.0.1:5672/``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterable
from urllib.parse import unquote, urlsplit
from uuid import uuid4

import aio_pika
import pytest

from tests.plugins.services import port_open, service_unavailable

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
RABBITMQCTL_TIMEOUT = 30.0


@pytest.fixture(scope="session")
def amqp_url() -> str:
    url = os.environ.get("AEXEC_TEST_AMQP_URL", DEFAULT_AMQP_URL)
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 5672
    if not port_open(host, port):
        service_unavailable(f"RabbitMQ is not reachable at {host}:{port}")
    return url


@pytest.fixture
async def amqp_prefix(amqp_url: str) -> AsyncIterator[str]:
    """A fresh queue prefix; the test's queues and exchanges (``<prefix>.*``) are deleted
    afterwards.

    They are found with ``rabbitmqctl`` when the broker is local and ``rabbitmqctl`` is on
    PATH (this also catches those declared by subprocesses); otherwise tests delete their own
    (``AmqpTransport.delete_topology``).
    """
    prefix = f"aexec-test-{uuid4().hex[:8]}"
    yield prefix
    queues = await list_entities(amqp_url, prefix, "list_queues")
    exchanges = await list_entities(amqp_url, prefix, "list_exchanges")
    if queues or exchanges:
        await delete_queues(amqp_url, queues, exchanges=exchanges)


async def list_entities(amqp_url: str, prefix: str, command: str) -> list[str]:
    """Names of broker queues (``list_queues``) or exchanges (``list_exchanges``) starting
    with ``prefix + "."``; empty if they cannot be listed."""
    parts = urlsplit(amqp_url)
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None or (parts.hostname or "localhost") not in LOCAL_HOSTS:
        return []
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    output = await rabbitmqctl_output(rabbitmqctl, "-s", command, "-p", vhost, "name")
    return [line for line in output.splitlines() if line.startswith(prefix + ".")]


async def delete_queues(amqp_url: str, names: list[str], *, exchanges: Iterable[str] = ()) -> None:
    """Delete broker queues ``names`` (full names, prefix included) with their messages, and
    ``exchanges``."""
    connection = await aio_pika.connect(urlsplit(amqp_url)._replace(query="").geturl(), timeout=10)
    async with connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)
        for name in exchanges:
            await channel.exchange_delete(name)


async def close_connections(connection_name: str) -> int:
    """Force-close (as an operator would) the broker connections a client named
    ``connection_name``; only those, so other tests sharing the broker are unaffected.
    Returns how many were closed.  Needs ``rabbitmqctl`` and a local broker."""
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:
        service_unavailable("rabbitmqctl is not on PATH")  # skips or fails: never returns
        return 0
    listing = await rabbitmqctl_output(
        rabbitmqctl, "-s", "list_connections", "pid", "client_properties"
    )
    marker = f'{{"connection_name","{connection_name}"}}'
    pids = [line.split("\t", 1)[0] for line in listing.splitlines() if marker in line]
    for pid in pids:
        await rabbitmqctl_output(rabbitmqctl, "close_connection", pid, "aexec test: forced close")
    return len(pids)


async def rabbitmqctl_output(*argv: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(RABBITMQCTL_TIMEOUT):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[1:])} failed: {stderr.decode(errors='replace')}")
    return stdout.decode()
