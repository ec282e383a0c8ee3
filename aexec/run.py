"""A submitted run, as the library hands it out: :class:`Run`, and its two implementations.

:class:`LocalRun` is driven by the coordinator inside the caller's executor and reads the
store; :class:`RemoteRun` was submitted to an ``aexec coordinator`` service and learns
everything from the events that service sends back through the broker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from aexec.codec import DEFAULT_MAX_BODY
from aexec.errors import AexecError, LeaseLostError, RunFailedError
from aexec.events import Event
from aexec.objects import ObjectStore, load_value
from aexec.plan import Plan
from aexec.store import RunRecord, StepRecord, Store, fold
from aexec.types import RunStatus, StepStatus

if TYPE_CHECKING:
    from aexec.batch import ActiveRun
    from aexec.coordinator import Coordinator


@runtime_checkable
class Run(Protocol):
    """A submitted run: await its result, stream its events, cancel it.

    ``isinstance(x, Run)`` holds for both implementations, as it did when ``Run`` was
    their base class."""

    run_id: str
    plan: Plan

    @property
    def status(self) -> RunStatus:
        """The run's status as this process knows it now."""

    async def wait(self) -> RunRecord:
        """Wait for the run to end; return its final record (never raises RunFailedError)."""

    async def result(self) -> Any:
        """The pipeline's result; raises :class:`~aexec.errors.RunFailedError` unless the
        run succeeded."""

    def events(self) -> AsyncIterator[Event]:
        """Every event of the run, from its submission until its end."""

    async def steps(self) -> list[StepRecord]:
        """The run's steps with their status and attempts, in plan order."""

    async def cancel(self, reason: str | None = None) -> None:
        """Cancel the run: unfinished steps are cancelled and the run ends ``cancelled``
        (its ``run_cancelled`` event says ``reason``).  The request is durable: whichever
        coordinator drives the run, or starts or takes it over later, honours it."""


async def load_result(
    store: Store, objects: ObjectStore, record: RunRecord, *, max_size: int = DEFAULT_MAX_BODY
) -> Any:
    """The decoded result of a succeeded run (values up to ``max_size`` bytes, the
    ``max_value_size`` setting); :class:`RunFailedError` (with each failed step's error,
    from ``store``) for a failed or cancelled one."""
    if record.status is not RunStatus.SUCCEEDED:
        if not record.status.finished:
            raise AexecError(f"run {record.run_id} has not finished ({record.status})")
        steps = await store.get_steps(record.run_id)
        errors = {s.key: s.error for s in steps if s.error is not None and s.status == "failed"}
        message = None if errors else f"run {record.run_id} {record.status}"
        raise RunFailedError(record.run_id, str(record.status), errors, message)
    if record.result is None:
        return None
    return await load_value(objects, record.result, max_size=max_size)


class LocalRun:
    """A run driven by the coordinator inside this process; its records come from ``store``."""

    def __init__(
        self,
        coordinator: Coordinator,
        active: ActiveRun,
        store: Store,
        objects: ObjectStore,
        *,
        max_value_size: int = DEFAULT_MAX_BODY,
    ) -> None:
        self._coordinator = coordinator
        self._active = active
        self._store = store
        self._objects = objects
        self._max_value_size = max_value_size
        self.run_id = active.run_id
        self.plan = active.plan

    @property
    def status(self) -> RunStatus:
        return self._active.status

    async def wait(self) -> RunRecord:
        """Wait for the run to end.  If another coordinator takes it over meanwhile, it is
        followed in the store until it ends there.  A run that this coordinator ended is
        returned as it committed the end, without reading the store back."""
        try:
            await asyncio.shield(self._active.done)
            final = self._active.final_record()
            if final is not None:
                return final
        except LeaseLostError:
            followed = self._store.follow(self.run_id)
            try:
                async for _ in followed:
                    pass
            finally:
                aclose = getattr(followed, "aclose", None)
                if aclose is not None:
                    await aclose()
        record = await self._store.get_run(self.run_id)
        if record is None:  # pragma: no cover - the store lost a run it acknowledged
            raise AexecError(f"run {self.run_id} vanished from the store")
        return record

    async def result(self) -> Any:
        record = await self.wait()
        return await load_result(self._store, self._objects, record, max_size=self._max_value_size)

    def events(self) -> AsyncIterator[Event]:
        return self._coordinator.events(self.run_id)

    async def steps(self) -> list[StepRecord]:
        return await self._store.get_steps(self.run_id)

    async def cancel(self, reason: str | None = None) -> None:
        await self._coordinator.cancel(self.run_id, reason)

    def __repr__(self) -> str:
        return f"<Run {self.run_id} {self.plan.pipeline} {self.status}>"


class RemoteRun:
    """A run submitted to a coordinator service; its events arrive through the broker and
    are handed to :meth:`receive`.  ``cancel`` asks the coordinators to cancel it."""

    def __init__(
        self,
        run_id: str,
        plan: Plan,
        priority: int,
        *,
        objects: ObjectStore,
        cancel: Callable[[str, str | None], Awaitable[None]],
        max_value_size: int = DEFAULT_MAX_BODY,
        tags: dict[str, str] | None = None,
    ) -> None:
        self._objects = objects
        self._max_value_size = max_value_size
        self._cancel = cancel
        self.run_id = run_id
        self.plan = plan
        self._record = RunRecord(
            run_id,
            plan.pipeline,
            plan.digest,
            RunStatus.PENDING,
            priority,
            plan.parameters,
            created_at=time.time(),
            tags=dict(tags or {}),
        )
        self._steps = {s.key: StepRecord(run_id, s.key, s.name, s.queue) for s in plan.steps}
        self._history: list[Event] = []
        self._changed = asyncio.Event()  # set (and replaced) whenever history grows
        self._done: asyncio.Future[RunRecord] = asyncio.get_running_loop().create_future()
        self.heard = time.monotonic()  # when its events last arrived (or it was submitted)

    @property
    def status(self) -> RunStatus:
        return self._record.status

    def receive(self, events: list[Event]) -> None:
        """Take in events of this run as the coordinator service sent them (a batch that
        was delivered again is ignored): the run and its steps change as they do in the
        store (:mod:`aexec.store.fold`)."""
        record = self._record
        self.heard = time.monotonic()
        for event in events:
            if event.seq and self._history and event.seq <= self._history[-1].seq:
                continue  # a redelivered batch
            self._history.append(event)
            fold.apply(record, self._steps, event)
        if record.status.finished and not self._done.done():
            self._done.set_result(record)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait(self) -> RunRecord:
        return await asyncio.shield(self._done)

    async def result(self) -> Any:
        record = await self.wait()
        if record.status is not RunStatus.SUCCEEDED:
            errors = {
                s.key: s.error
                for s in self._steps.values()
                if s.error is not None and s.status is StepStatus.FAILED
            }
            message = None
            if not errors:
                why = f": {record.error}" if record.error else ""
                message = f"run {self.run_id} {record.status}{why}"
            raise RunFailedError(self.run_id, str(record.status), errors, message)
        if record.result is None:
            return None
        return await load_value(self._objects, record.result, max_size=self._max_value_size)

    async def events(self) -> AsyncIterator[Event]:
        """The run's history, then its events as they arrive, until it ends: each reader
        keeps only its place in the history (a reader that stops reading holds nothing)."""
        seen = 0
        while True:
            changed = self._changed
            history = self._history
            while seen < len(history):
                seen += 1
                yield history[seen - 1]
            if self._done.done():
                return
            await changed.wait()

    async def steps(self) -> list[StepRecord]:
        """Step statuses as the events received so far tell them."""
        return [replace(step) for step in self._steps.values()]

    async def cancel(self, reason: str | None = None) -> None:
        await self._cancel(self.run_id, reason)

    def __repr__(self) -> str:
        return f"<Run {self.run_id} {self.plan.pipeline} {self.status}>"


__all__ = ["LocalRun", "RemoteRun", "Run", "load_result"]
