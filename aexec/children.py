"""Sub-pipelines run as child runs (``run_as_child=True``): the coordinator's gateway for
:data:`~aexec.plan.CHILD` steps.

"Sending" such a step creates a run of its own, the child, from the plan compiled into
the step (task option ``plan``), its placeholders filled with the step's inputs
(:func:`child_plan`).  The child has its own retries and cancellation; its run row names
the parent run and step (``parent``, ``parent_step``).  When it ends, the gateway hands the
parent step back a completion, as a worker would: the child's result, or its error.

Exactly one child per parent step, whatever repeats: its id is derived from the parent run
and step (:func:`child_run_id`), so a child that exists already is followed rather than
created again — by a re-dispatch after a takeover, or a new attempt of a step whose
dispatch was never confirmed — and the parent step's completion is recorded once per
attempt like any other.  (A child step has no retries of its own: the child has them.)
The step shows as running on the "worker" ``child:<id>``, for which the gateway heartbeats
while it follows the child, so that the coordinator's usual watch on lost workers holds.
Cancelling the parent cancels its children (:meth:`ChildRuns.revoke`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from aexec import codec, messages
from aexec.background import Background
from aexec.errors import (
    AexecError,
    LeaseLostError,
    PlanError,
    StoreError,
    StoreUnavailableError,
)
from aexec.gateway import GatewayStep
from aexec.inbox import DispatchFailed, Item, Reply
from aexec.plan import Plan
from aexec.store import RunRecord, Store
from aexec.transport import Announcement
from aexec.types import ErrorInfo, RunStatus

log = logging.getLogger(__name__)

WORKER_PREFIX = "child:"
"""The worker a child step shows as running on: ``child:<child run id>``."""


def child_run_id(run_id: str, key: str) -> str:
    """The id of the child run that step ``key`` of run ``run_id`` starts: the same on
    every coordinator and for every attempt, so that a repeated dispatch finds it."""
    digest = hashlib.sha256(f"{run_id}\0{key}".encode()).hexdigest()
    return digest[:32]


def child_plan(step_plan: bytes, inputs: Sequence[str], call: bytes, values: list[bytes]) -> Plan:
    """The plan of a child run: the plan compiled into its step (``step_plan``), with the
    placeholders of its ``inputs`` (parameters) filled from the step's ``call`` and encoded
    input ``values`` (claim checks stay claim checks)."""
    plan = Plan.from_bytes(step_plan)
    if not inputs:
        return plan
    _, given = codec.decode(call, inputs=[codec.embed(v) for v in values])
    if not isinstance(given, dict) or set(given) != set(inputs):
        raise PlanError(f"child step inputs {sorted(inputs)} do not match its call")
    wire = plan.to_wire()
    for raw in wire[2]:
        raw[7] = codec.fill_params(raw[7], given)
    wire[4] = codec.fill_params(wire[4], given)
    wire[5] = codec.fill_params(wire[5], given)
    return Plan.from_wire(wire)


class ChildHost(Protocol):
    """What the gateway needs of its coordinator."""

    store: Store

    async def submit(
        self,
        plan: Plan,
        *,
        priority: int = 0,
        run_id: str | None = None,
        parent: str | None = None,
        parent_step: str | None = None,
    ) -> Any: ...

    async def cancel(self, run_id: str, reason: str | None = None) -> None: ...

    def driven(self, run_id: str) -> asyncio.Future[RunStatus] | None:
        """The ending of run ``run_id`` if this coordinator drives it, else None."""


class ChildRuns:
    """The gateway of :data:`~aexec.plan.CHILD` steps for one coordinator (``host``);
    ``heartbeat_interval``: how often it vouches for the children it follows."""

    def __init__(self, host: ChildHost, heartbeat_interval: float) -> None:
        self._host = host
        self._interval = heartbeat_interval
        self._post: Callable[[Item], None] | None = None
        self._background: Background | None = None
        self._following: dict[tuple[str, str, int], str] = {}  # attempt → child run id
        self._vouched: list[tuple[str, str, int]] = []  # before start

    async def start(self, post: Callable[[Item], None]) -> None:
        self._post = post
        background = Background("child runs")
        await background.__aenter__()
        self._background = background
        background.start_loop(self._heartbeat(), name="child runs heartbeat")
        vouched, self._vouched = self._vouched, []
        for attempt in vouched:
            self._follow(*attempt)

    async def close(self) -> None:
        background, self._background = self._background, None
        self._following.clear()
        if background is not None:
            await background.aclose()

    async def publish(self, steps: Sequence[GatewayStep]) -> list[GatewayStep]:
        created = []
        for s in steps:
            if await self._create(s):
                created.append(s)
        return created

    async def revoke(self, attempts: Sequence[tuple[str, str, int]]) -> None:
        for run_id, key, _attempt in attempts:
            child = child_run_id(run_id, key)
            try:
                await self._host.cancel(child, f"its parent run {run_id} was cancelled")
            except AexecError as exc:
                log.warning("could not cancel child run %s of %s: %s", child, run_id, exc)

    def vouch(self, attempts: Sequence[tuple[str, str, int, str]]) -> None:
        for run_id, key, attempt, _worker in attempts:
            if self._background is None:
                self._vouched.append((run_id, key, attempt))
            else:
                self._follow(run_id, key, attempt)

    async def _create(self, s: GatewayStep) -> bool:
        """Create the child run of ``s`` unless it exists; follow it.  False if it cannot
        be created now (posted as a failure, or left for a re-dispatch)."""
        key, child = s.step.key, child_run_id(s.run_id, s.step.key)
        options = dict(s.step.task_options)
        try:
            if await self._host.store.get_run(child) is None:
                plan = child_plan(options["plan"], options["inputs"], s.step.call, s.inputs)
                await self._host.submit(
                    plan, priority=s.priority, run_id=child, parent=s.run_id, parent_step=key
                )
        except (StoreUnavailableError, LeaseLostError) as exc:
            # Left unconfirmed: dispatched again after a restart (the id finds it if it was).
            log.warning("could not create child run %s of %s: %s", child, s.run_id, exc)
            return False
        except (AexecError, KeyError) as exc:  # a plan, value or setting that will not do
            error = ErrorInfo(type(exc).__name__, f"cannot start the child run: {exc}", "", False)
            self._posted(DispatchFailed(s.run_id, s.index, s.attempt, error))
            return False
        self._follow(s.run_id, key, s.attempt)
        return True

    def _follow(self, run_id: str, key: str, attempt: int) -> None:
        """Report the child of this attempt running, and its end once it ends."""
        child = child_run_id(run_id, key)
        if (run_id, key, attempt) in self._following or self._background is None:
            return
        self._following[(run_id, key, attempt)] = child
        started = messages.Progress(
            run_id, key, attempt, WORKER_PREFIX + child, time.time(), None, f"child run {child}"
        )
        self._posted(Reply(Announcement(started.encode())))
        self._background.start_work(self._await_end(run_id, key, attempt, child))

    async def _await_end(self, run_id: str, key: str, attempt: int, child: str) -> None:
        started = time.time()
        record = await self._ended(child)
        self._following.pop((run_id, key, attempt), None)
        output, error = None, None
        if record.status is RunStatus.SUCCEEDED:
            output = record.result if record.result is not None else codec.encode(None)
        else:
            error = ErrorInfo(
                "ChildRunError",
                f"child run {child} {record.status}: {record.error or 'no error recorded'}",
                "",
                False,
            )
        done = messages.Completion(
            run_id, key, attempt, output, error, WORKER_PREFIX + child, started, time.time()
        )
        self._posted(Reply(Announcement(done.encode())))

    async def _ended(self, child: str) -> RunRecord:
        """The record of run ``child`` once it ended: awaited here while this coordinator
        drives it, else followed in the store."""
        delay = 0.5
        while True:
            ending = self._host.driven(child)
            if ending is not None:
                with contextlib.suppress(Exception):  # lost to another coordinator: follow
                    await asyncio.shield(ending)
            try:
                record = await self._host.store.get_run(child)
                if record is not None and record.status.finished:
                    return record
                if record is not None and self._host.driven(child) is None:
                    followed = self._host.store.follow(child)
                    async with contextlib.aclosing(followed) as events:  # type: ignore[type-var]
                        async for _ in events:
                            pass
                    continue
            except StoreError as exc:
                log.warning("following child run %s: %s (again in %.1f s)", child, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _heartbeat(self) -> None:
        """Vouch for the children followed, each as the worker of its parent step."""
        while True:
            await asyncio.sleep(self._interval)
            now = time.time()
            for attempt, child in list(self._following.items()):
                beat = messages.Heartbeat(WORKER_PREFIX + child, now, [attempt])
                self._posted(Reply(Announcement(beat.encode())))

    def _posted(self, item: Item) -> None:
        if self._post is not None:
            self._post(item)


__all__ = ["WORKER_PREFIX", "ChildHost", "ChildRuns", "child_plan", "child_run_id"]
