"""Talking HTTP to aexec's operations endpoint from tests: a raw GET over asyncio streams,
and Prometheus samples parsed with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def get(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` from the endpoint on ``port``: status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(port: int) -> Samples:
    status, text = await get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def until(port: int, condition: Callable[[Samples], bool], wait: float = 30.0) -> Samples:
    """Scrape ``port`` until ``condition`` holds (at most ``wait`` s)."""
    async with asyncio.timeout(wait):
        while True:
            samples = await scrape(port)
            if condition(samples):
                return samples
            await asyncio.sleep(0.05)
