"""A webhook endpoint for tests: a real aiohttp server on a free local port that records
every call and answers as told (the ``receiver`` fixture)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

WAIT = 10.0


@dataclass
class Call:
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class Receiver:
    """A webhook endpoint: records every call and answers with the next of ``answers``
    (200 once they run out); ``"hang"`` holds the call until the test ends."""

    answers: list[int | str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    port: int = 0
    hanging: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def handle(self, request: web.Request) -> web.Response:
        call = Call(dict(request.headers), await request.read(), time.monotonic())
        answer = self.answers.pop(0) if self.answers else 200
        async with self.changed:
            self.calls.append(call)
            if answer == "hang":
                self.hanging += 1
            self.changed.notify_all()
        if answer == "hang":
            await self.release.wait()
            return web.Response(status=200)
        assert isinstance(answer, int)
        return web.Response(status=answer, text="nope" if answer >= 300 else "ok")

    async def wait_for(self, count: int, *, hanging: int = 0) -> list[Call]:
        async with asyncio.timeout(WAIT), self.changed:
            await self.changed.wait_for(
                lambda: len(self.calls) >= count and self.hanging >= hanging
            )
        return self.calls


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", found.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    found.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield found
    finally:
        found.release.set()
        await runner.cleanup()
