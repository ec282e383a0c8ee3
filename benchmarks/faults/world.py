"""The processes of the system under test, supervised as compose supervises them: three
workers and two coordinator services, each under a fixed name (a *slot*), started again
when they exit, every one stopped by its own pid at the end.

A slot runs one process at a time, plus the ones the campaign replaced and that are still
draining.  Faults act on a slot (:meth:`Slot.kill`, :meth:`Slot.replace`); what became of
every process is kept (:meth:`Slot.fates`) for the checker: a process that exits on its own
after it was ready has crashed; one that exits before it is ready (say, the broker was
down when it started, or it exited with status 2) is simply started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.faults.model import ProcessFate
from benchmarks.procs import Child, ChildFailed

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0  # seconds for a process to say it is ready
RESTART_BACKOFF = 1.0  # before starting again a process that exited on its own
EXIT_NOT_STARTED = 2
"""aexec's exit status for bad input, which includes a broker lost before the process said
it was ready: its ready line may come out a moment before that (a coordinator's does)."""


@dataclass(eq=False)
class Incarnation:
    """One process of a slot; ``how`` as in :class:`~benchmarks.faults.model.ProcessFate`."""

    child: Child
    started: float
    how: str = "running"
    ready: bool = False
    signalled_at: float | None = None
    restart_after: float = 0.0
    ended: float | None = None
    code: int | None = None
    overran: bool = False

    @property
    def alive(self) -> bool:
        process = self.child.process
        return process is not None and process.returncode is None

    def signal(self, signum: signal.Signals) -> None:
        process = self.child.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    def fate(self, slot: str) -> ProcessFate:
        process = self.child.process
        return ProcessFate(
            slot,
            0 if process is None else process.pid,
            self.how,
            self.started,
            self.signalled_at,
            self.ended,
            self.code,
            self.overran,
            str(self.child.log_file),
        )


class Slot:
    """A named role (``w1``, ``c2``): one process at a time, started again when it exits."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        logs: Path,
        ready: str,
        cwd: Path,
        tasks: asyncio.TaskGroup,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.logs = logs
        self.ready_marker = ready
        self.cwd = cwd
        self._tasks = tasks
        self._restarts: asyncio.Queue[float] = asyncio.Queue()
        self._supervisor: asyncio.Task[None] | None = None
        self.current: Incarnation | None = None
        self.incarnations: list[Incarnation] = []
        self.stopping = False

    async def start(self) -> bool:
        """Start the first process and supervise the slot; True once it is ready."""
        self._supervisor = self._tasks.create_task(self._supervise(), name=f"slot-{self.name}")
        incarnation = await self._launch()
        return incarnation.ready

    async def _supervise(self) -> None:
        while True:
            delay = await self._restarts.get()
            await asyncio.sleep(delay)
            if self.current is None and not self.stopping:
                await self._launch()

    async def _launch(self) -> Incarnation:
        log_file = self.logs / f"{self.name}.{len(self.incarnations) + 1}.log"
        child = Child(
            self.name, self.argv, log_file=log_file, ready=self.ready_marker, env=self.env,
            cwd=str(self.cwd),
        )  # fmt: skip
        incarnation = Incarnation(child, time.time())
        self.current = incarnation
        self.incarnations.append(incarnation)
        try:
            await child.start(within=START_TIMEOUT)
            incarnation.ready = True
        except ChildFailed as exc:
            log.info("%s: %s", self.name, exc)
        except OSError as exc:  # it could not even be spawned
            log.error("%s: cannot start %s: %s", self.name, self.argv, exc)
        if child.process is not None:
            self._tasks.create_task(self._watch(incarnation), name=f"watch-{self.name}")
        else:
            incarnation.how = "never-ready"
            if self.current is incarnation:
                self.current = None
            self._restart(RESTART_BACKOFF)
        return incarnation

    async def _watch(self, incarnation: Incarnation) -> None:
        process = incarnation.child.process
        assert process is not None
        code = await process.wait()
        incarnation.ended, incarnation.code = time.time(), code
        await incarnation.child.stop()  # reaps it, finishes its log
        if self.current is incarnation:
            self.current = None
        if incarnation.how == "running":
            started = incarnation.ready and code != EXIT_NOT_STARTED
            incarnation.how = "crashed" if started else "never-ready"
            log.warning("%s (pid %d) exited with %s: %s", self.name, process.pid, code,
                        incarnation.how)  # fmt: skip
            self._restart(RESTART_BACKOFF)
        elif incarnation.how == "killed":
            self._restart(incarnation.restart_after)

    def _restart(self, delay: float) -> None:
        if not self.stopping:
            self._restarts.put_nowait(delay)

    def kill(self, restart_after: float) -> int | None:
        """SIGKILL the slot's process, started again ``restart_after`` s after it died;
        returns its pid (None when the slot has no process now)."""
        incarnation = self.current
        if incarnation is None or not self._targetable(incarnation):
            return None
        incarnation.how, incarnation.signalled_at = "killed", time.time()
        incarnation.restart_after = restart_after
        incarnation.signal(signal.SIGKILL)
        return incarnation.child.pid

    def replace(self) -> int | None:
        """SIGTERM the slot's process (it drains and exits on its own time) and start a new
        one under the same name at once; returns the old pid (None: no process ready now)."""
        incarnation = self.current
        if incarnation is None or not incarnation.ready or not self._targetable(incarnation):
            return None
        incarnation.how, incarnation.signalled_at = "replaced", time.time()
        incarnation.signal(signal.SIGTERM)
        self.current = None
        self._restart(0.0)
        return incarnation.child.pid

    def _targetable(self, incarnation: Incarnation) -> bool:
        """Alive, and not already sent a signal by the campaign."""
        return incarnation.alive and incarnation.how == "running" and not self.stopping

    async def stop(self, grace: float) -> None:
        """SIGTERM every live process of the slot; kill those still alive after ``grace``
        seconds (they overran); stop supervising."""
        self.stopping = True
        now = time.time()
        live = [i for i in self.incarnations if i.alive]
        for incarnation in live:
            if incarnation.how == "running":
                # One still starting may not handle SIGTERM yet: nothing to judge there.
                incarnation.how = "stopped" if incarnation.ready else "never-ready"
                incarnation.signalled_at = now
                incarnation.signal(signal.SIGTERM)
        await asyncio.gather(*(self._reap(i, grace) for i in live))
        if self._supervisor is not None:
            self._supervisor.cancel()

    async def _reap(self, incarnation: Incarnation, grace: float) -> None:
        process = incarnation.child.process
        assert process is not None
        deadline = max(incarnation.signalled_at or 0.0, time.time() - grace) + grace
        try:
            await asyncio.wait_for(process.wait(), max(0.0, deadline - time.time()))
        except TimeoutError:
            incarnation.overran = True
            incarnation.signal(signal.SIGKILL)
            await process.wait()
        incarnation.ended = incarnation.ended or time.time()
        incarnation.code = process.returncode
        await incarnation.child.stop()

    def fates(self) -> list[ProcessFate]:
        return [i.fate(self.name) for i in self.incarnations]


@dataclass(frozen=True, slots=True)
class WorldConfig:
    """How to start the system: backend URLs (a store URL per coordinator, through its own
    proxy), the ledger, and the engine's timings (float seconds)."""

    repo: Path
    logs: Path
    ledger: Path
    broker: str
    objects: str
    stores: Mapping[str, str]  # coordinator slot → its store URL
    workers: Sequence[str] = ("w1", "w2", "w3")
    remote_worker: str = "w3"
    concurrency: int = 16
    lease: float = 2.5
    ack_after: float = 1.0
    heartbeat_interval: float = 0.5
    worker_timeout: float = 3.0


PIPELINES = "benchmarks.faults.pipelines"
REMOTE_STEPS = "benchmarks.faults.remote_steps"


class World:
    """Every slot, supervised inside one task group (``async with``)."""

    def __init__(self, config: WorldConfig, base_env: Mapping[str, str]) -> None:
        self.config = config
        self._base_env = {k: v for k, v in base_env.items() if not k.startswith("AEXEC_")}
        self._group: asyncio.TaskGroup | None = None
        self.workers: dict[str, Slot] = {}
        self.coordinators: dict[str, Slot] = {}

    def _env(self, **extra: str) -> dict[str, str]:
        c = self.config
        env = dict(self._base_env)
        env.update(
            PYTHONPATH=str(c.repo),
            AEXEC_BROKER=c.broker,
            AEXEC_OBJECTS=c.objects,
            AEXEC_LEASE=f"{c.lease:g}",
            AEXEC_ACK_AFTER=f"{c.ack_after:g}",
            AEXEC_HEARTBEAT_INTERVAL=f"{c.heartbeat_interval:g}",
            AEXEC_WORKER_TIMEOUT=f"{c.worker_timeout:g}",
        )
        env.update(extra)
        return env

    async def __aenter__(self) -> World:
        group = asyncio.TaskGroup()
        await group.__aenter__()
        self._group = group
        c, aexec = self.config, [sys.executable, "-m", "aexec"]
        for name in c.workers:
            modules = ["-A", PIPELINES] + (["-A", REMOTE_STEPS] if name == c.remote_worker else [])
            argv = [*aexec, "worker", "start", "-v", "-n", name, "-c", str(c.concurrency), *modules]
            env = self._env(AEXEC_FAULTS_LEDGER=str(c.ledger), AEXEC_FAULTS_WORKER=name)
            self.workers[name] = Slot(
                name, argv, env, logs=c.logs, ready=f"worker {name} ready:", cwd=c.repo,
                tasks=group,
            )  # fmt: skip
        for name, store in c.stores.items():
            argv = [*aexec, "coordinator", "-v"]
            self.coordinators[name] = Slot(
                name, argv, self._env(AEXEC_STORE=store), logs=c.logs,
                ready="connected to RabbitMQ", cwd=c.repo, tasks=group,
            )  # fmt: skip
        return self

    @property
    def slots(self) -> list[Slot]:
        return [*self.workers.values(), *self.coordinators.values()]

    async def start(self) -> list[str]:
        """Start every slot; the names of those whose first process never got ready."""
        ready = await asyncio.gather(*(slot.start() for slot in self.slots))
        return [slot.name for slot, ok in zip(self.slots, ready, strict=True) if not ok]

    async def stop(self, worker_grace: float, coordinator_grace: float) -> None:
        """SIGTERM everything at once; whatever overruns its grace is killed."""
        await asyncio.gather(
            *(slot.stop(worker_grace) for slot in self.workers.values()),
            *(slot.stop(coordinator_grace) for slot in self.coordinators.values()),
        )

    def fates(self) -> list[ProcessFate]:
        return [fate for slot in self.slots for fate in slot.fates()]

    async def __aexit__(self, *exc_info: object) -> None:
        group, self._group = self._group, None
        if group is None:
            return
        try:
            if any(not slot.stopping for slot in self.slots):
                await self.stop(5.0, 5.0)
        finally:
            await group.__aexit__(None, None, None)
