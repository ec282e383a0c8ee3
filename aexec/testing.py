"""Helpers for testing pipelines: run them in memory, and await their events.

::

    import aexec
    import aexec.testing

    @aexec.step(retries=2)
    async def double(x: int) -> int:
        return 2 * x

    @aexec.pipeline
    def twice(x: int) -> object:
        return double.alias("second")(double.alias("first")(x))

    async def test_twice_doubles_twice() -> None:
        async with aexec.testing.executor() as ex:
            run = await ex.submit(twice, x=3)
            first = await aexec.testing.wait_for_event(
                run, aexec.EventKind.STEP_SUCCEEDED, step="first"
            )
            assert first.attempt == 1
            assert await run.result() == 12

:func:`executor` is the embedded mode on in-memory adapters: the coordinator and one
worker share the test's event loop, with the same semantics as the distributed mode
(retries, timeouts, skipped dependents, cancellation, the codec), and nothing reaches the
disk, the network or the ``AEXEC_*`` environment.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

from aexec.config import Settings
from aexec.dsl import StepDef
from aexec.errors import ConfigError
from aexec.events import Event, EventKind
from aexec.executor import Executor
from aexec.run import Run

MEMORY = "memory://"


@contextlib.asynccontextmanager
async def executor(
    *, steps: Iterable[StepDef[Any, Any]] = (), **settings: Any
) -> AsyncIterator[Executor]:
    """An open :class:`~aexec.executor.Executor` on in-memory transport, store and object
    store, with its in-process worker; everything it holds is gone when the block ends.

    ``settings`` set other :class:`~aexec.config.Settings` fields (``concurrency=1``,
    ``inline_threshold=1024``, ``fail_fast=True``, ...); a broker, store or objects URL
    other than ``memory://`` is a :class:`~aexec.errors.ConfigError`.  ``steps`` are
    implementations for the ``remote_step`` declarations of the pipelines under test.
    """
    base = Settings(broker=None, store=MEMORY, objects=MEMORY)
    merged = base.merged(settings)
    backends = {"broker": merged.broker or MEMORY, "store": merged.store, "objects": merged.objects}
    elsewhere = sorted(name for name, url in backends.items() if url != MEMORY)
    if elsewhere or merged.remote:
        raise ConfigError(
            "aexec.testing.executor runs in memory only: leave out "
            + ", ".join(elsewhere or ["remote"])
        )
    async with Executor(merged, steps=steps) as ex:
        yield ex


async def wait_for_event(
    events: Run | AsyncIterable[Event], kind: EventKind, *, step: str | None = None
) -> Event:
    """The first event of ``kind`` (and of step ``step``, when given) among ``events``.

    ``events`` is a :class:`~aexec.run.Run` (its whole history is searched, from the
    start) or any stream of events, such as a coordinator's ``events(run_id)`` or a
    store's ``follow(run_id)``; the stream is closed once the event is found.  Events
    that end (the run ended) without one are an :class:`AssertionError`.  To bound the
    wait, wrap the call in ``asyncio.timeout(seconds)``.
    """
    stream = events if isinstance(events, AsyncIterable) else events.events()
    iterator = aiter(stream)
    try:
        async for event in iterator:
            if event.kind == kind and (step is None or event.step == step):
                return event
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
    wanted = f"a {kind} event" + ("" if step is None else f" of step {step!r}")
    raise AssertionError(f"the events ended without {wanted}")


__all__ = ["executor", "wait_for_event"]
