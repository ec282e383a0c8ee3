"""Serving the UI with uvicorn on the caller's event loop: what ``aexec ui`` and
``aexec coordinator --ui`` run.  It installs no signal handler: the caller sets ``stop``."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterator

import uvicorn

from aexec.errors import ConfigError
from aexec.executor import Executor
from aexec.web.app import UiConfig, app

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 1  # seconds open streams get to end when the server stops


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (``localhost`` included)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port); a ConfigError (bad
    input) if it cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ConfigError(f"cannot serve the UI on {host}:{port}: {exc.strerror or exc}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot serve the UI on {host}:{port}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


def address_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the caller owns the signals


async def serve(
    executor: Executor,
    config: UiConfig,
    sock: socket.socket,
    *,
    stop: asyncio.Event,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the UI over ``executor`` on ``sock`` (from :func:`bind`; closed on return)
    until ``stop`` is set; ``on_ready`` gets the URL once serving starts."""
    server = _Server(
        uvicorn.Config(
            app(executor, config),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=SHUTDOWN_GRACE,
        )
    )
    try:
        async with asyncio.TaskGroup() as group:
            serving = group.create_task(server.serve(sockets=[sock]))
            if on_ready is not None:
                on_ready(address_url(sock))
            stopped = group.create_task(stop.wait())
            await asyncio.wait([serving, stopped], return_when=asyncio.FIRST_COMPLETED)
            server.should_exit = True
            stopped.cancel()
    finally:
        sock.close()
