"""The injector: fires the planned faults at their times, each on its own target, and keeps
the log of what it did.

Faults run concurrently (a database stall may last while a worker is killed), but two
faults on one resource — the broker, one coordinator's database link, one process slot —
take turns.  A fault that cannot be carried out when it fires (no run in flight, nothing
captured to duplicate yet, the broker refusing a publish for too long) is logged as
skipped and not counted.  :meth:`Injector.restore` undoes whatever is still in effect.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from benchmarks.faults import poison
from benchmarks.faults.client import Client
from benchmarks.faults.model import Poison
from benchmarks.faults.pipelines import QUEUES
from benchmarks.faults.rabbit import PrivateRabbit
from benchmarks.faults.schedule import PlannedFault
from benchmarks.faults.tcpproxy import TcpProxy
from benchmarks.faults.wire import (
    REPLY_PREFIX,
    STEP_PREFIX,
    SUBMIT_QUEUE,
    Wire,
    WireError,
    digest,
)
from benchmarks.faults.workload import PlannedRun
from benchmarks.faults.world import Slot, World

log = logging.getLogger(__name__)

STEP_QUEUES = tuple(STEP_PREFIX + q for q in QUEUES)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """One fault as it happened: ``at`` is wall-clock time; ``injected`` False: skipped."""

    index: int
    kind: str
    planned: float  # seconds into the campaign
    at: float
    injected: bool
    detail: str

    def line(self) -> str:
        state = "" if self.injected else "skipped: "
        return (
            f"{self.at:.3f} +{self.planned:7.2f}s #{self.index} {self.kind}: {state}{self.detail}"
        )


class Skip(Exception):
    """The fault cannot be carried out now (the reason is its message)."""


async def _ctl(command: Callable[..., T], *args: str) -> T:
    """Run a blocking ``rabbitmqctl`` command in a thread; Skip if it fails."""
    try:
        return await asyncio.to_thread(command, *args)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        raise Skip(f"rabbitmqctl failed: {exc}") from exc


class Injector:
    def __init__(
        self,
        world: World,
        rabbit: PrivateRabbit,
        proxies: Mapping[str, TcpProxy],
        wire: Wire,
        client: Client,
        *,
        lease: float,
    ) -> None:
        self.world = world
        self.rabbit = rabbit
        self.proxies = proxies
        self.wire = wire
        self.client = client
        self.lease = lease
        self._locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(
            asyncio.Lock
        )
        self._broker_stopped = False
        self.records: list[FaultRecord] = []
        self.poison: list[Poison] = []
        self.duplicated: set[tuple[str, str, int]] = set()
        self._kinds: dict[str, Callable[[PlannedFault], Awaitable[str]]] = {
            "worker-kill": self._worker_kill,
            "worker-restart": self._worker_restart,
            "coordinator-kill": self._coordinator_kill,
            "broker-close": self._broker_close,
            "broker-restart": self._broker_restart,
            "db-cut": self._db_cut,
            "db-stall": self._db_stall,
            "cancel": self._cancel,
            "malformed": self._malformed,
            "oversized": self._oversized,
            "duplicate": self._duplicate,
            "poison-run": self._poison_run,
        }

    async def run(self, schedule: list[PlannedFault], t0: float) -> None:
        """Fire every fault at ``t0 + fault.at`` (loop time); return once all are done."""
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as group:
            for fault in schedule:
                delay = t0 + fault.at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                group.create_task(self._fire(fault))

    async def _fire(self, fault: PlannedFault) -> None:
        at = time.time()
        try:
            detail, injected = await self._kinds[fault.kind](fault), True
        except (Skip, WireError) as exc:
            detail, injected = str(exc), False
        record = FaultRecord(fault.index, fault.kind, fault.at, at, injected, detail)
        self.records.append(record)
        log.info("%s", record.line())

    def write_log(self, path: Path) -> None:
        """Every fault, planned or skipped, in the order they fired."""
        lines = [r.line() + "\n" for r in sorted(self.records, key=lambda r: r.at)]
        path.write_text("".join(lines), encoding="utf-8")

    def counts(self) -> dict[str, int]:
        """Injected faults by kind."""
        return dict(collections.Counter(r.kind for r in self.records if r.injected))

    # -- processes -------------------------------------------------------------------------

    async def _worker_kill(self, fault: PlannedFault) -> str:
        return await self._kill(list(self.world.workers.values()), fault)

    async def _coordinator_kill(self, fault: PlannedFault) -> str:
        return await self._kill(list(self.world.coordinators.values()), fault)

    async def _kill(self, slots: list[Slot], fault: PlannedFault) -> str:
        slot = slots[int(fault.choice * len(slots))]
        async with self._locks[f"slot:{slot.name}"]:
            pid = slot.kill(restart_after=fault.pause)
        if pid is None:
            raise Skip(f"{slot.name} has no process now")
        return f"SIGKILL {slot.name} pid {pid}; started again in {fault.pause:g} s"

    async def _worker_restart(self, fault: PlannedFault) -> str:
        slots = list(self.world.workers.values())
        slot = slots[int(fault.choice * len(slots))]
        async with self._locks[f"slot:{slot.name}"]:
            pid = slot.replace()
        if pid is None:
            raise Skip(f"{slot.name} has no process now")
        return f"SIGTERM {slot.name} pid {pid}; a new {slot.name} starts now"

    # -- broker ----------------------------------------------------------------------------

    async def _broker_close(self, fault: PlannedFault) -> str:
        async with self._locks["broker"]:
            await _ctl(self.rabbit.close_all_connections, "aexec faults: close_all_connections")
        return "closed every connection"

    async def _broker_restart(self, fault: PlannedFault) -> str:
        async with self._locks["broker"]:
            self._broker_stopped = True
            try:
                await _ctl(self.rabbit.stop_app)
                await asyncio.sleep(fault.pause)
            finally:
                await asyncio.shield(self._start_broker())
        return f"stop_app, {fault.pause:g} s, start_app"

    async def _start_broker(self) -> None:
        while self._broker_stopped:
            try:
                await _ctl(self.rabbit.start_app)
                self._broker_stopped = False
            except Skip as exc:
                log.warning("start_app failed, trying again: %s", exc)
                await asyncio.sleep(1.0)

    # -- database --------------------------------------------------------------------------

    def _proxy(self, fault: PlannedFault) -> tuple[str, TcpProxy]:
        names = sorted(self.proxies)
        name = names[int(fault.choice * len(names))]
        return name, self.proxies[name]

    async def _db_cut(self, fault: PlannedFault) -> str:
        name, proxy = self._proxy(fault)
        async with self._locks[f"db:{name}"]:
            count = proxy.open_connections
            proxy.cut()
        return f"reset {count} PostgreSQL connections of {name}"

    async def _db_stall(self, fault: PlannedFault) -> str:
        name, proxy = self._proxy(fault)
        held = self.lease + fault.pause
        async with self._locks[f"db:{name}"]:
            proxy.blackhole()
            try:
                await asyncio.sleep(held)
            finally:
                proxy.restore()
        return f"held the PostgreSQL traffic of {name} for {held:g} s (lease {self.lease:g} s)"

    # -- runs ------------------------------------------------------------------------------

    async def _cancel(self, fault: PlannedFault) -> str:
        done = await self.client.cancel(fault.choice)
        if done is None:
            raise Skip("no run in flight")
        return f"cancelled {done}"

    async def _poison_run(self, fault: PlannedFault) -> str:
        tag = 1_000_000 + fault.index
        if fault.variant % 2 == 0:
            planned = PlannedRun(0.0, "poisoned", {"tag": tag}, 0)
            submitted = await self.client.submit(planned)
            if submitted is None:
                raise Skip("the poisoned run could not be submitted")
            return f"run {submitted.run.run_id} whose step fails with a NUL in its error"
        run_id, body = poison.absurd_submission(fault.index, tag)
        await self._publish_poison(SUBMIT_QUEUE, body, "poison-run", "absurd-id", run_id)
        return f"a submission with a {len(run_id)}-character run id"

    # -- messages --------------------------------------------------------------------------

    async def _target(self, fault: PlannedFault) -> str:
        """A step queue, the submit queue or a live coordinator's reply queue."""
        where = fault.variant % 3
        if where == 0:
            return STEP_QUEUES[int(fault.choice * len(STEP_QUEUES))]
        if where == 2:
            replies = sorted(
                name
                for name, consumers in await self._queues("consumers")
                if name.startswith(REPLY_PREFIX) and consumers != "0"
            )
            if replies:
                return replies[int(fault.choice * len(replies))]
        return SUBMIT_QUEUE

    async def _queues(self, column: str) -> list[tuple[str, str]]:
        rows = await _ctl(self.rabbit.list_queues, "name", column)
        return [(row[0], row[1]) for row in rows if len(row) == 2]

    async def _publish_poison(
        self, queue: str, body: bytes, kind: str, variant: str, run_id: str | None = None
    ) -> None:
        at = time.time()
        try:
            await self.wire.publish(queue, body)
        except WireError:
            # Unconfirmed is not unpublished: if it arrives, it is still our poison.
            self.poison.append(Poison(digest(body), queue, kind, variant, at, False, run_id))
            raise
        self.poison.append(Poison(digest(body), queue, kind, variant, at, run_id=run_id))

    async def _malformed(self, fault: PlannedFault) -> str:
        queue = await self._target(fault)
        form, body = poison.malformed(fault.index, fault.variant)
        await self._publish_poison(queue, body, "malformed", form)
        return f"{form} ({len(body)} bytes) to {queue}"

    async def _oversized(self, fault: PlannedFault) -> str:
        queue = await self._target(fault)
        body = poison.oversized(fault.index)
        await self._publish_poison(queue, body, "oversized", f"{len(body)} bytes")
        return f"{len(body)} bytes to {queue}"

    async def _duplicate(self, fault: PlannedFault) -> str:
        pick = fault.variant % 10
        kind = "completion" if pick < 6 else "step" if pick < 8 else "submit"
        seen = self.wire.captured(kind) or self.wire.captured("completion")
        if not seen:
            raise Skip(f"no {kind} captured yet")
        message = seen[int(fault.choice * len(seen))]
        if message.kind == "step" and message.step is not None and message.attempt is not None:
            # Before the publish: an unconfirmed one may be delivered all the same.
            self.duplicated.add((message.run_id, message.step, message.attempt))
        await self.wire.publish(
            message.queue, message.body, priority=message.priority, headers=message.headers
        )
        return f"again: {message.describe()}"

    # -- the end ---------------------------------------------------------------------------

    async def restore(self) -> None:
        """Undo what is still in effect: the broker started, every database link flowing."""
        await self._start_broker()
        for proxy in self.proxies.values():
            proxy.restore()
