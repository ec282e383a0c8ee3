"""Server-Sent Events: a run's event log as it grows, and the runs list as it changes.

A run's stream sends each event as ``id: <seq>``, ``event: <kind>``, ``data: <the runs
logs --json line>`` and ends with ``event: end`` after the run's ending event.  A client
that reconnects sends ``Last-Event-ID`` (the browser's ``EventSource`` does) and gets what
it missed, nothing twice; ``?after=SEQ`` starts a fresh stream after an event.

The runs list has no log to follow: its stream sends the page the client watches
(``event: runs``) whenever that page changed, looking at the store every
:data:`RUNS_INTERVAL` seconds while a client is connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from aexec.errors import StoreUnavailableError
from aexec.executor import Executor
from aexec.web.api import HttpError, Reads

KEEPALIVE = 15.0  # seconds between comments on an idle stream (proxies close silent ones)
RUNS_INTERVAL = 1.0  # seconds between two looks at the runs page a client watches
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def message(data: Any, *, event: str | None = None, id: int | None = None) -> str:
    """One SSE message; ``data`` as one line of JSON (which has no raw newline)."""
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.append(f"data: {json.dumps(data, ensure_ascii=False)}")
    return "\n".join(lines) + "\n\n"


def resume_point(request: Request) -> int:
    """The seq to follow from: ``Last-Event-ID`` on a reconnect, else ``?after=``."""
    for text in (request.headers.get("last-event-id"), request.query_params.get("after")):
        if text:
            try:
                value = int(text)
            except ValueError:
                raise HttpError(400, f"not an event id: {text!r}") from None
            if value < 0:
                raise HttpError(400, f"not an event id: {text!r}")
            return value
    return 0


class Streams:
    def __init__(self, executor: Executor, reads: Reads) -> None:
        self.executor = executor
        self.reads = reads

    async def run_events(self, request: Request) -> Response:
        """``GET /api/runs/{id}/stream``: the run's events after the resume point, live."""
        record = await self.reads.find_run(request.path_params["run_id"])
        after = resume_point(request)
        store = self.executor.store

        async def body() -> AsyncIterator[str]:
            yield "retry: 1000\n\n"
            last = after
            while True:
                followed = store.follow(record.run_id, after=last)
                try:
                    async with contextlib.aclosing(followed) as events:  # type: ignore[type-var]
                        async for event in _with_keepalive(events):
                            if event is None:
                                yield ": keepalive\n\n"
                                continue
                            last = event.seq
                            yield message(event.to_dict(), event=str(event.kind), id=event.seq)
                    break
                except StoreUnavailableError:
                    await asyncio.sleep(1.0)  # the store blinked: follow again from `last`
            yield message({"run_id": record.run_id}, event="end")

        return StreamingResponse(body(), media_type="text/event-stream", headers=HEADERS)

    async def runs(self, request: Request) -> Response:
        """``GET /api/runs/stream?...``: the runs page of the same query, each time it
        changes (the first one at once)."""
        reads = self.reads

        async def page() -> Any:
            response = await reads.runs(request)
            return json.loads(bytes(response.body))

        async def body() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            async for snapshot in _changes(page, RUNS_INTERVAL):
                yield message(snapshot, event="runs") if snapshot is not None else ": ping\n\n"

        await page()  # a bad query is a 400 now, not a broken stream
        return StreamingResponse(body(), media_type="text/event-stream", headers=HEADERS)


async def _with_keepalive(events: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """``events``, with a None after every :data:`KEEPALIVE` seconds without one."""
    pending: asyncio.Task[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait([pending], timeout=KEEPALIVE)
            if not done:
                yield None
                continue
            task, pending = pending, None
            try:
                yield task.result()
            except StopAsyncIteration:
                return
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending


async def _changes(read: Callable[[], Awaitable[Any]], interval: float) -> AsyncIterator[Any]:
    """What ``read()`` returns each time it differs from the last, looking every
    ``interval`` s; None (a keepalive) when it has not changed for :data:`KEEPALIVE` s."""
    last: Any = object()
    quiet = 0.0
    while True:
        current = await read()
        if current != last:
            last, quiet = current, 0.0
            yield current
        elif quiet >= KEEPALIVE:
            quiet = 0.0
            yield None
        await asyncio.sleep(interval)
        quiet += interval
