"""A small asyncio TCP proxy for fault tests: it forwards, and on demand cuts, refuses or
black-holes connections, with no root and no touching the real server.

::

    async with TcpProxy("127.0.0.1", 5432) as proxy:   # listens on 127.0.0.1:<proxy.port>
        proxy.cut()        # reset every open connection (both ends)
        proxy.refuse()     # reset new connections as soon as they are accepted
        proxy.blackhole()  # hold every byte, on open and new connections alike
        proxy.restore()    # forward again (held bytes go through: nothing is lost)

Black-holing holds bytes rather than dropping them, as a network partition does to TCP: a
client sees no answer, and nothing arrives corrupted after :meth:`TcpProxy.restore`.
Every task of the proxy is its own, cancelled and awaited when it closes.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from types import TracebackType
from typing import Self

CHUNK = 65536


class _Link:
    """One proxied connection: the client's socket and ours to the server."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.server: asyncio.StreamWriter | None = None

    def abort(self) -> None:
        for writer in (self.client, self.server):
            if writer is not None:
                writer.transport.abort()  # an RST, not a polite FIN


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0  # known once started
        self.accepted = 0  # connections accepted so far
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def cut(self) -> None:
        """Reset every open connection, as a crashed server or router would."""
        for link in list(self._links):
            link.abort()

    def refuse(self) -> None:
        """Reset every new connection once accepted, as a server that is down would."""
        self._refusing = True

    def blackhole(self) -> None:
        """Stop forwarding: bytes (and new connections) wait until :meth:`restore`."""
        self._flowing.clear()

    def restore(self) -> None:
        """Forward again, for open and new connections."""
        self._refusing = False
        self._flowing.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        link = _Link(writer)
        self._links.add(link)
        self.accepted += 1
        try:
            if self._refusing:
                return
            await self._flowing.wait()
            try:
                server_reader, link.server = await asyncio.open_connection(*self.target)
            except OSError:
                return
            async with asyncio.TaskGroup() as pipes:
                pipes.create_task(self._pipe(reader, link.server, link))
                pipes.create_task(self._pipe(server_reader, writer, link))
        finally:
            link.abort()
            self._links.discard(link)
            self._tasks.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass  # a reset: the link is over
        finally:
            with suppress(OSError):
                link.abort()  # one side is gone: so is the other
