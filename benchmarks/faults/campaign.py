"""One campaign, from an empty directory to the verdict.

1. *World*: a private RabbitMQ node (firehose tracing on), a private PostgreSQL cluster,
   one TCP proxy in front of it per coordinator, a ``file://`` object directory; three
   workers and two coordinator services started as users start them.
2. *Faults*: the planned runs are submitted at their times while the planned faults fire.
3. *Quiet*: every fault is undone and nothing new is injected; every run must reach a
   final state within ``quiet`` seconds.
4. *Shutdown*: every process is sent SIGTERM and must exit cleanly within its grace.
5. *Check*: the store, the ledger, the processes' fates and the dead letters are read back
   and the invariants checked (:mod:`benchmarks.faults.checker`).

Everything started is stopped by its pid at the end, on failure and on Ctrl-C too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from aexec import Executor
from aexec.config import Settings
from benchmarks.faults import checker, ledger, observe
from benchmarks.faults.client import Client
from benchmarks.faults.faults import Injector
from benchmarks.faults.model import Observations, Poison
from benchmarks.faults.pipelines import QUEUES
from benchmarks.faults.postgres import (
    PrivatePostgres,
    cluster_home,
    start_cluster,
    stop_cluster,
)
from benchmarks.faults.rabbit import PrivateRabbit, start_node, stop_node
from benchmarks.faults.report import Outcome
from benchmarks.faults.schedule import plan_faults
from benchmarks.faults.tcpproxy import TcpProxy
from benchmarks.faults.wire import DEAD_LETTER_QUEUE, STEP_PREFIX, SUBMIT_QUEUE, Wire
from benchmarks.faults.workload import plan_runs
from benchmarks.faults.world import World, WorldConfig

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
COORDINATORS = ("c1", "c2")
WORKER_GRACE = 30.0  # a draining worker finishes its steps (the longest is ~10 s)
COORDINATOR_GRACE = 45.0  # a coordinator waits up to 30 s for its runs before it exits
SETTLE = 2.0  # after the last run ended, before stopping: late executions show up


class CampaignError(RuntimeError):
    """The campaign could not set its world up (not a finding about aexec)."""


@dataclass(frozen=True, slots=True)
class Options:
    """A campaign's size and timings; durations are float seconds."""

    seed: int
    mode: str = "short"
    duration: float = 120.0  # of faults
    runs: int = 300
    faults: int = 100
    quiet: float = 60.0  # the most the runs may take to finish once the faults stop
    kinds: tuple[str, ...] = ()
    slack: float = 1.0
    lease: float = 2.5
    ack_after: float = 1.0
    heartbeat_interval: float = 0.5
    worker_timeout: float = 3.0
    workdir: Path | None = None
    keep: bool = False


@dataclass(slots=True)
class _Phases:
    spent: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        log.info("phase %s", name)
        try:
            yield
        finally:
            self.spent[name] = round(time.monotonic() - started, 1)


async def run(options: Options) -> Outcome:
    """Run a campaign; its outcome (the verdict), whatever it finds."""
    work = options.workdir or Path(tempfile.mkdtemp(prefix=f"aexec-faults-{options.seed}-"))
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        raise CampaignError(f"the work directory {work} is not empty")
    outcome = Outcome(options.seed, options.mode, options.kinds)
    try:
        await _campaign(options, work, outcome)
    finally:
        if options.keep:
            outcome.notes.append(f"work directory kept: {work}")
            outcome.write_json(work / "report.json")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return outcome


async def _campaign(options: Options, work: Path, outcome: Outcome) -> None:
    rng = random.Random(options.seed)
    runs_plan = plan_runs(rng, options.runs, options.duration * 0.8)
    schedule = plan_faults(rng, options.faults, 2.0, options.duration, options.kinds)
    phases = _Phases()
    outcome.phases = phases.spent
    for sub in ("logs", "ledger", "objects", "rabbitmq"):
        (work / sub).mkdir()
    async with contextlib.AsyncExitStack() as stack:
        with phases.phase("setup"):
            rabbit = await stack.enter_async_context(_rabbit(work / "rabbitmq"))
            cluster = await stack.enter_async_context(_postgres(work))
            await _migrate(cluster.dsn)
            proxies = {c: await stack.enter_async_context(_proxy(cluster)) for c in COORDINATORS}
            await asyncio.to_thread(rabbit.ctl, "trace_on")
            wire = await stack.enter_async_context(Wire(rabbit.url))
            objects = f"file://{work / 'objects'}"
            config = WorldConfig(
                repo=REPO,
                logs=work / "logs",
                ledger=work / "ledger",
                broker=rabbit.url,
                objects=objects,
                stores={c: _through(proxies[c]) for c in COORDINATORS},
                lease=options.lease,
                ack_after=options.ack_after,
                heartbeat_interval=options.heartbeat_interval,
                worker_timeout=options.worker_timeout,
            )
            world = await stack.enter_async_context(World(config, os.environ))
            not_ready = await world.start()
            if not_ready:
                raise CampaignError(f"{', '.join(not_ready)} did not start (logs in {work})")
            await _await_topology(rabbit)
            # Settings of its own: the caller's AEXEC_* variables do not leak in.
            executor = await stack.enter_async_context(
                Executor(Settings(broker=rabbit.url, objects=objects, remote=True))
            )
        client = Client(executor)
        injector = Injector(world, rabbit, proxies, wire, client, lease=options.lease)
        with phases.phase("faults"):
            t0 = asyncio.get_running_loop().time()
            async with asyncio.TaskGroup() as group:
                group.create_task(client.submit_all(runs_plan, t0))
                group.create_task(injector.run(schedule, t0))
            injector.write_log(work / "faults.log")
        async with Executor(Settings(store=cluster.dsn, objects=objects)) as reader:
            with phases.phase("quiet"):
                await injector.restore()
                left = await _until_finished(reader, options.quiet)
                if left:
                    outcome.notes.append(
                        f"{left} runs still unfinished {options.quiet:g} s after the faults"
                    )
                await asyncio.sleep(SETTLE)
                consumed = await _consumed_queues(rabbit)
                submissions = client.submissions()
            with phases.phase("shutdown"):
                await world.stop(WORKER_GRACE, COORDINATOR_GRACE)
                dead_letters_left = await _drain_dead_letters(rabbit, wire)
                queues = await asyncio.to_thread(
                    rabbit.list_queues, "name", "messages", "consumers"
                )
            with phases.phase("check"):
                runs = await observe.read_runs(reader)
                executions, unreadable = ledger.read(work / "ledger")
                obs = Observations(
                    runs=runs,
                    expected=observe.expectations(
                        runs, (p.run_id for p in injector.poison if p.run_id)
                    ),
                    submissions=submissions,
                    cancels=client.cancels(),
                    executions=executions,
                    duplicated=frozenset(injector.duplicated),
                    processes=world.fates(),
                    poison=[_consumed(p, consumed) for p in injector.poison],
                    dead_letters=list({d.digest: d for d in wire.dead_letters}.values()),
                    slack=options.slack,
                )
                outcome.violations = checker.check(obs)
        outcome.faults = injector.counts()
        outcome.runs = observe.counts(r.status for r in runs.values())
        outcome.steps = sum(len(r.steps) for r in runs.values())
        outcome.executions = len(executions)
        outcome.notes.extend(_notes(injector, client, unreadable, queues, dead_letters_left, obs))


@contextlib.asynccontextmanager
async def _rabbit(base: Path) -> AsyncIterator[PrivateRabbit]:
    rabbit, server = await asyncio.to_thread(start_node, base, name="aexec-faults")
    try:
        yield rabbit
    finally:
        await asyncio.to_thread(stop_node, rabbit, server)


@contextlib.asynccontextmanager
async def _postgres(work: Path) -> AsyncIterator[PrivatePostgres]:
    """The cluster; its log ends up in ``work`` (``postgres.log``) whatever happens."""
    base, outside = cluster_home(work)
    try:
        cluster = await asyncio.to_thread(start_cluster, base)
        try:
            yield cluster
        finally:
            await asyncio.to_thread(stop_cluster, cluster)
            if outside:
                with contextlib.suppress(OSError):
                    shutil.copyfile(cluster.log_file, work / "postgres.log")
    finally:
        if outside:
            shutil.rmtree(base, ignore_errors=True)


@contextlib.asynccontextmanager
async def _proxy(cluster: PrivatePostgres) -> AsyncIterator[TcpProxy]:
    async with TcpProxy("127.0.0.1", cluster.port) as proxy:
        yield proxy


def _through(proxy: TcpProxy) -> str:
    """The store URL of a coordinator: the private cluster, through ``proxy``."""
    return f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"


async def _migrate(dsn: str) -> None:
    """Create aexec's schema once, before two coordinators race to."""
    async with Executor(Settings(store=dsn, objects="memory://")):
        pass


async def _await_topology(rabbit: PrivateRabbit, within: float = 60.0) -> None:
    """Until both coordinators consume submissions and aexec's queues exist under the names
    the campaign aims its messages at."""
    wanted = {DEAD_LETTER_QUEUE, *(STEP_PREFIX + q for q in QUEUES)}
    deadline = time.monotonic() + within
    while True:
        rows = await asyncio.to_thread(rabbit.list_queues, "name", "consumers")
        consumers = {row[0]: row[1] for row in rows if len(row) == 2}
        if consumers.get(SUBMIT_QUEUE) == str(len(COORDINATORS)) and wanted <= set(consumers):
            return
        if time.monotonic() > deadline:
            raise CampaignError(
                f"aexec's queues are not where the campaign expects them: wanted "
                f"{sorted(wanted | {SUBMIT_QUEUE})} (with {len(COORDINATORS)} consumers of "
                f"{SUBMIT_QUEUE}), found {consumers}"
            )
        await asyncio.sleep(0.2)  # poll interval of a bounded wait


async def _until_finished(reader: Executor, within: float) -> int:
    """Wait until every run in the store is finished (at most ``within`` s); how many
    are not."""
    deadline = time.monotonic() + within
    while True:
        statuses = await observe.run_statuses(reader)
        left = sum(s not in ("succeeded", "failed", "cancelled") for s in statuses.values())
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(1.0)  # poll interval of a bounded wait


async def _drain_dead_letters(rabbit: PrivateRabbit, wire: Wire, within: float = 30.0) -> int:
    """Wait until the campaign has read every dead letter; how many are left unread."""
    deadline = time.monotonic() + within
    while True:
        rows = await asyncio.to_thread(rabbit.list_queues, "name", "messages")
        left = sum(int(r[1]) for r in rows if len(r) == 2 and r[0] == DEAD_LETTER_QUEUE)
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.5)  # poll interval of a bounded wait


async def _consumed_queues(rabbit: PrivateRabbit) -> set[str]:
    """The queues that have a consumer now."""
    rows = await asyncio.to_thread(rabbit.list_queues, "name", "consumers")
    return {row[0] for row in rows if len(row) == 2 and row[1] != "0"}


def _consumed(poison: Poison, consumed: set[str]) -> Poison:
    return replace(poison, consumed=poison.queue in consumed)


def _notes(
    injector: Injector,
    client: Client,
    unreadable: list[str],
    queues: list[list[str]],
    dead_letters_left: int,
    obs: Observations,
) -> list[str]:
    notes = []
    skipped = [r for r in injector.records if not r.injected]
    if skipped:
        notes.append(f"{len(skipped)} planned faults skipped (see the fault log)")
    if client.failed_submits or client.given_up:
        notes.append(
            f"{client.failed_submits} submissions raised and were tried again; "
            f"{len(client.given_up)} runs never submitted"
        )
    never_ready = [f for f in obs.processes if f.how == "never-ready"]
    if never_ready:
        notes.append(f"{len(never_ready)} process starts failed before ready (restarted)")
    if unreadable:
        notes.append(f"{len(unreadable)} unreadable ledger lines, e.g. {unreadable[0]}")
    arrived = {d.digest for d in obs.dead_letters}
    caught = sum(p.digest in arrived for p in obs.poison)
    notes.append(
        f"{len(obs.poison)} poison messages published, {caught} dead-lettered; "
        f"{len(obs.dead_letters)} dead letters in all; "
        f"{len(obs.duplicated)} step messages published twice on purpose"
    )
    stranded = [p for p in obs.poison if not p.consumed and p.digest not in arrived]
    if stranded:
        notes.append(f"{len(stranded)} poison messages went to queues nobody consumes at the end")
    full = [f"{r[0]} ({r[1]})" for r in queues if len(r) == 3 and r[1] != "0"]
    if full:
        notes.append(f"queues with messages at the end: {', '.join(sorted(full))}")
    if dead_letters_left:
        notes.append(f"{dead_letters_left} dead letters were left unread")
    return notes
