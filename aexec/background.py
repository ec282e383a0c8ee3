"""Who owns a long-lived component's tasks: one task group each, and one timer task.

:class:`Background` is the task group of one coordinator or worker.  It is opened in the
component's ``__aenter__`` and closed in its ``__aexit__`` (or ``abort()``); closing it
cancels every task it owns and waits for them all.  Two kinds of task live in it:

* *loops* (a scheduler, a heartbeat, a lease keeper) run until the group closes;
* *work* (a step being executed, a batch being published) ends on its own;
  :meth:`Background.drain` waits for it, so that a graceful stop can let the work in
  flight finish, within a timeout, before the group cancels what is left.

Tasks handle the failures they expect (a step's exception becomes a failed completion, a
broker outage is retried).  An exception that escapes a task is a bug, and a component
with a bug stops as a whole, the way :class:`asyncio.TaskGroup` does: the group cancels
every sibling, logs the failure, lets the component drop its inputs (``on_failure``), and
:meth:`Background.aclose` raises it.  A half-alive component would be worse than a dead
one: a worker whose heartbeat loop died silently has every step it runs taken for lost,
and a coordinator whose lease loop died keeps runs that nobody renews.

The group runs in a host task of its own rather than in the task that opens it: a library
opens its engine lazily, from whichever task submits first, and closes it from another,
and a failing child must cancel the group, never an unrelated caller.

:class:`Timers` keeps any number of timers in a heap served by one task, rather than a
loop callback or a task per timer (a coordinator may hold thousands of retry backoffs).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

from aexec.errors import AexecError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Background:
    """The task group of one long-lived component; ``name`` names it in logs."""

    def __init__(
        self,
        name: str,
        *,
        on_failure: Callable[[Exception], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self._on_failure = on_failure
        self._group: asyncio.TaskGroup | None = None
        self._host: asyncio.Task[None] | None = None
        self._work: set[asyncio.Task[Any]] = set()
        self.failure: Exception | None = None
        """The failure that stopped the group (an :class:`ExceptionGroup`), if one did."""

    @property
    def running(self) -> bool:
        """True from opening until closing, or until a task fails (at the latest, once the
        group has refused a new task because of that failure)."""
        return self._group is not None

    async def __aenter__(self) -> Background:
        if self._host is not None:
            raise AexecError(f"{self.name} is open already")
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._host = asyncio.get_running_loop().create_task(self._run(ready), name=self.name)
        try:
            await asyncio.shield(ready)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                ready.set_result(None)
                await asyncio.get_running_loop().create_future()  # until aclose() cancels it
        except Exception as exc:  # a task failed: the group has cancelled and awaited the rest
            self._group = None
            self.failure = exc
            log.error("%s stopped: a background task failed", self.name, exc_info=exc)
            if self._on_failure is not None:
                try:
                    await self._on_failure(exc)
                except Exception:
                    log.exception("%s could not stop its inputs after the failure", self.name)
        finally:
            self._group = None

    def start_loop(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run ``coro`` until the group closes."""
        return self._start(coro, name)

    def start_work(
        self, coro: Coroutine[Any, Any, Any], *, name: str | None = None
    ) -> asyncio.Task[Any]:
        """Run ``coro``, a piece of work that :meth:`drain` waits for."""
        task = self._start(coro, name)
        self._work.add(task)
        task.add_done_callback(self._work.discard)
        return task

    def _start(self, coro: Coroutine[Any, Any, Any], name: str | None) -> asyncio.Task[Any]:
        """Raises :class:`~aexec.errors.AexecError` (and closes ``coro``) unless the group
        takes new tasks: it is not open, it is closing, or a task failed."""
        group = self._group
        if group is not None:
            try:
                return group.create_task(coro, name=name)
            except RuntimeError:  # a task failed: the group is shutting down
                self._group = None
        coro.close()  # never awaited: close it, or Python warns about it later
        state = "stopped" if self._host is not None else "not running"
        raise AexecError(f"{self.name} is {state}")

    def cancel_work(self) -> None:
        """Cancel every piece of work still running (loops keep running); :meth:`drain`
        waits for them to end."""
        for task in list(self._work):
            task.cancel()

    async def drain(self) -> None:
        """Wait until no work is left, work started meanwhile included (bound the wait with
        :func:`asyncio.timeout`); loops keep running."""
        while self._work:
            await asyncio.wait(list(self._work))

    async def aclose(self) -> None:
        """Cancel every task of the group and wait for them all; then raise the failure
        that stopped the group, if one did (once).  Closing a closed group does nothing; if
        the caller is cancelled while it waits, closing again waits for the rest."""
        host = self._host
        if host is None:
            return
        self._group = None  # takes no new task from here on
        host.cancel()
        await asyncio.wait([host])  # a CancelledError here is our caller's: it propagates
        self._host = None
        failure, self.failure = self.failure, None
        if failure is not None:
            raise failure


class Timers(Generic[T]):
    """Hands each item to ``fire`` once its delay has passed: any number of timers, one task
    (:meth:`run`, a loop of the component's :class:`Background`)."""

    def __init__(self, fire: Callable[[T], None]) -> None:
        self._fire = fire
        self._heap: list[tuple[float, int, T]] = []
        self._order = itertools.count()  # equal times fire in the order they were set
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._heap)

    def after(self, delay: float, item: T) -> None:
        """Fire ``item`` in ``delay`` seconds."""
        due = asyncio.get_running_loop().time() + delay
        entry = (due, next(self._order), item)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._changed.set()  # an earlier deadline than the one run() sleeps towards

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        heap, changed = self._heap, self._changed
        while True:
            changed.clear()
            now = loop.time()
            while heap and heap[0][0] <= now:
                self._fire(heapq.heappop(heap)[2])
            if not heap:
                await changed.wait()
                continue
            try:
                async with asyncio.timeout_at(heap[0][0]):
                    await changed.wait()
            except TimeoutError:
                pass  # the earliest timer is due


__all__ = ["Background", "Timers"]
