"""The operations endpoint of a long-lived process: ``/metrics``, ``/healthz``, ``/readyz``.

A small HTTP/1.1 server on the process's own event loop (no thread, no web framework):

* ``GET /metrics`` — the component's registry in the Prometheus text format, after
  ``refresh()`` (which reads the queue depths from the broker, within a bound);
* ``GET /healthz`` — liveness: 200 while the component runs, 503 once it stopped or failed
  (an orchestrator restarts it);
* ``GET /readyz`` — readiness: 200 while it is connected to what it needs and consuming,
  503 with the reason in the body otherwise (an orchestrator sends it no traffic, a
  compose healthcheck waits).

Every request gets one response and the connection closes.  Its accept loop and each
connection belong to one :class:`~aexec.background.Background` group, opened by
``async with`` and closed when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from aexec.background import Background
from aexec.errors import ConfigError

log = logging.getLogger(__name__)

MAX_REQUEST = 8192
"""Bytes of request line and headers read; a longer request is refused."""

REQUEST_TIMEOUT = 5.0
"""Seconds a client gets to send its request."""

CHECK_TIMEOUT = 3.0
"""Seconds a readiness check or a metrics refresh may take before it counts as failed."""


@dataclass(frozen=True, slots=True)
class Checks:
    """What the endpoint asks its component.

    ``live()`` is None while the component runs, else why not; ``ready()`` likewise for
    readiness (it may ask the broker or the store); ``refresh()`` updates what the metrics
    read from outside (queue depths) before a scrape."""

    live: Callable[[], str | None]
    ready: Callable[[], Awaitable[str | None]]
    refresh: Callable[[], Awaitable[None]] | None = None


class Endpoint:
    """Serves ``registry`` and ``checks`` on ``host:port`` (port 0: any free port; the
    bound one is :attr:`port` once open)."""

    def __init__(
        self, registry: CollectorRegistry, checks: Checks, *, host: str, port: int, name: str
    ) -> None:
        self.registry = registry
        self.checks = checks
        self.host = host
        self.port = port
        self._name = name
        self._socket: socket.socket | None = None
        self._background = Background(f"{name} endpoint")

    async def __aenter__(self) -> Endpoint:
        sock = _listen(self.host, self.port)
        try:
            await self._background.__aenter__()
        except BaseException:
            sock.close()
            raise
        self._socket = sock
        self.port = sock.getsockname()[1]
        self._background.start_loop(self._accept(sock), name=f"aexec-endpoint-{self.port}")
        log.info(
            "%s serves /metrics, /healthz and /readyz on http://%s:%d",
            self._name,
            self.host,
            self.port,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self._background.aclose()
        finally:
            sock, self._socket = self._socket, None
            if sock is not None:
                sock.close()

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:  # e.g. too many open files: try again shortly
                log.warning("%s endpoint cannot accept a connection: %s", self._name, exc)
                await asyncio.sleep(0.1)
                continue
            self._background.start_work(self._serve(conn))

    async def _serve(self, conn: socket.socket) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=MAX_REQUEST)
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError):
                await _respond(writer, 400, b"bad request\n")
                return
            method, path = _request_line(head)
            if method not in ("GET", "HEAD"):
                await _respond(writer, 405, b"method not allowed\n")
                return
            status, body, content_type = await self._answer(path)
            await _respond(writer, status, body, content_type, head_only=method == "HEAD")
        except (ConnectionError, OSError) as exc:
            log.debug("%s endpoint: a client went away: %s", self._name, exc)
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()
            else:
                conn.close()

    async def _answer(self, path: str) -> tuple[int, bytes, str]:
        """Status, body and content type for ``path``; a failing check is a 503, never an
        exception (a bug in a check must not stop the endpoint)."""
        text = "text/plain; charset=utf-8"
        try:
            if path == "/metrics":
                refresh = self.checks.refresh
                if refresh is not None:
                    try:
                        async with asyncio.timeout(CHECK_TIMEOUT):
                            await refresh()
                    except Exception as exc:  # stale depths beat no metrics at all
                        log.debug("%s: metrics refresh failed: %s", self._name, exc)
                return 200, generate_latest(self.registry), CONTENT_TYPE_LATEST
            if path == "/healthz":
                why = self.checks.live()
                return (200, b"ok\n", text) if why is None else (503, f"{why}\n".encode(), text)
            if path == "/readyz":
                try:
                    async with asyncio.timeout(CHECK_TIMEOUT):
                        why = await self.checks.ready()
                except TimeoutError:
                    why = f"no answer within {CHECK_TIMEOUT:g} s"
                return (200, b"ready\n", text) if why is None else (503, f"{why}\n".encode(), text)
        except Exception as exc:
            log.exception("%s endpoint failed to answer %s", self._name, path)
            return 500, f"{type(exc).__name__}: {exc}\n".encode(), text
        return 404, b"not found: try /metrics, /healthz or /readyz\n", text


def _listen(host: str, port: int) -> socket.socket:
    """A non-blocking listening socket; a :class:`~aexec.errors.ConfigError` if the address
    cannot be bound (in use, not local)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(64)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        why = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {why}") from None
    return sock


def _request_line(head: bytes) -> tuple[str, str]:
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3:
        return "", ""
    method, target, _ = parts
    return method, target.split("?", 1)[0]


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    head_only: bool = False,
) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    writer.write(head if head_only else head + body)
    await writer.drain()


__all__ = ["Checks", "Endpoint"]
