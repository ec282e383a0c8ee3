"""The shared RabbitMQ: a private name prefix per benchmark run, readiness checks, clean-up.

Every queue and exchange a benchmark run declares (aexec's, the raw floor's, Celery's) is
named ``<prefix>.*`` with a random prefix, so a run never touches anyone else's entities and
deletes exactly its own at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
import uuid
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import aio_pika
import aiormq.exceptions

log = logging.getLogger(__name__)

DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672/"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def new_prefix() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}"


def plain_url(url: str) -> str:
    """``url`` without its query (aio-pika and Celery get no aexec-only options)."""
    return urlunsplit(urlsplit(url)._replace(query=""))


def with_query(url: str, **options: str) -> str:
    """``url`` with ``options`` added to its query (existing keys are replaced)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in options]
    return urlunsplit(parts._replace(query=urlencode([*query, *options.items()])))


async def server_version(url: str) -> str | None:
    """RabbitMQ's version from the AMQP server properties (None if unreachable)."""
    try:
        connection = await aio_pika.connect(plain_url(url), timeout=5)
    except (OSError, aiormq.exceptions.AMQPError, TimeoutError):
        return None
    async with connection:
        properties = connection.transport.connection.server_properties
        version = properties.get("version")
        return version.decode() if isinstance(version, bytes) else str(version)


async def wait_for_consumers(url: str, queue: str, count: int = 1, within: float = 30.0) -> None:
    """Return once broker queue ``queue`` has ``count`` consumers (raises TimeoutError)."""
    connection = await aio_pika.connect(plain_url(url), timeout=5)
    deadline = time.monotonic() + within
    delay = 0.01
    async with connection:
        while True:
            channel = await connection.channel()
            try:
                declared = await channel.declare_queue(queue, passive=True)
                consumers = declared.declaration_result.consumer_count
            except aiormq.exceptions.ChannelNotFoundEntity:
                consumers = 0
            finally:
                with contextlib.suppress(aiormq.exceptions.AMQPError, RuntimeError):
                    await channel.close()
            if consumers >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no consumer on {queue} within {within:g} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)


async def purge_queue(url: str, queue: str) -> None:
    """Drop the ready messages of broker queue ``queue`` (if it exists)."""
    connection = await aio_pika.connect(plain_url(url), timeout=5)
    async with connection:
        channel = await connection.channel()
        with contextlib.suppress(aiormq.exceptions.ChannelNotFoundEntity):
            declared = await channel.declare_queue(queue, passive=True)
            await declared.purge()


async def _rabbitmqctl(*args: str) -> list[str]:
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        return []
    process = await asyncio.create_subprocess_exec(
        exe,
        "-s",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), 30)
    except TimeoutError:
        process.kill()
        await process.wait()
        return []
    return out.decode(errors="replace").splitlines()


async def delete_prefixed(url: str, prefix: str, known_queues: list[str] | None = None) -> int:
    """Delete every queue and exchange named ``<prefix>.*`` (found with ``rabbitmqctl`` when
    the broker is local, plus ``known_queues``); returns how many entities were deleted."""
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    queues, exchanges = set(known_queues or ()), set[str]()
    if (parts.hostname or "localhost") in LOCAL_HOSTS:
        listed = await _rabbitmqctl("list_queues", "-p", vhost, "name")
        queues |= {q for q in listed if q.startswith(prefix + ".")}
        listed = await _rabbitmqctl("list_exchanges", "-p", vhost, "name")
        exchanges |= {e for e in listed if e.startswith(prefix + ".") or e == prefix}
    deleted = 0
    connection = await aio_pika.connect(plain_url(url), timeout=10)
    async with connection:
        for kind, names in (("queue", sorted(queues)), ("exchange", sorted(exchanges))):
            for name in names:
                channel = await connection.channel()
                try:
                    if kind == "queue":
                        await channel.queue_delete(name)
                    else:
                        await channel.exchange_delete(name)
                    deleted += 1
                except aiormq.exceptions.AMQPError as exc:
                    log.debug("cannot delete %s %s: %s", kind, name, exc)
                finally:
                    with contextlib.suppress(aiormq.exceptions.AMQPError, RuntimeError):
                        await channel.close()
    return deleted
