"""The campaign's pipelines and the steps they run; workers load this module with ``-A``.

Every step records its execution in the ledger (:func:`benchmarks.faults.ledger.note`)
before doing anything else.  Results are plain integers so that the campaign can compute
what each run must return (:mod:`benchmarks.faults.workload`).

Steps travel on three queues: ``faults`` (async steps), ``faults-sync`` (sync steps, in
the worker's thread pool) and ``faults-remote``, whose one step, ``faults_shout``, lives in
:mod:`benchmarks.faults.remote_steps`: this module only declares it (``remote_step``), as
a pipeline of another code base would.
"""

from __future__ import annotations

import asyncio
import time

from aexec import current, pipeline, remote_step, step
from benchmarks.faults.ledger import note

QUEUE = "faults"
SYNC_QUEUE = "faults-sync"
REMOTE_QUEUE = "faults-remote"
QUEUES = (QUEUE, SYNC_QUEUE, REMOTE_QUEUE)

BLOB_SIZE = 96 * 1024  # above the 64 KiB inline threshold: the output goes to the object store


class FlakyError(RuntimeError):
    """A failure that goes away on a later attempt."""


class DoomedError(RuntimeError):
    """A failure that never goes away."""


@step(queue=QUEUE)
async def origin(tag: int) -> int:
    note()
    return tag


@step(queue=QUEUE)
async def add(x: int, y: int, ms: int) -> int:
    note()
    await asyncio.sleep(ms / 1000)
    return x + y


@step(queue=SYNC_QUEUE)
def crunch(x: int, ms: int) -> int:
    note()
    time.sleep(ms / 1000)
    return x * 2


@step(queue=QUEUE, retries=3, retry_backoff=0.2, retry_backoff_max=1.0)
async def flaky(x: int, succeed_on: int) -> int:
    """Fails every attempt before ``succeed_on``."""
    note()
    attempt = current().attempt
    if attempt < succeed_on:
        raise FlakyError(f"attempt {attempt} fails; attempt {succeed_on} will succeed")
    return x + 1


@step(queue=QUEUE, retries=1, retry_backoff=0.1)
async def doomed(x: int) -> int:
    note()
    raise DoomedError(f"this step always fails (input {x})")


@step(queue=QUEUE, retries=0)
async def nul(x: int) -> int:
    """Fails with a NUL character in its error message (PostgreSQL text refuses it)."""
    note()
    raise ValueError(f"poison: a NUL byte \x00 in an error message (input {x})")


@step(queue=QUEUE)
async def slow(x: int, seconds: float) -> int:
    """Runs longer than the workers' early-ack threshold."""
    note()
    await asyncio.sleep(seconds)
    return x + 1


@step(queue=QUEUE)
async def blob(x: int) -> bytes:
    """An output too large to travel inline: a claim check through the object store."""
    note()
    return bytes([x % 256]) * BLOB_SIZE


@step(queue=SYNC_QUEUE)
def measure(data: bytes) -> int:
    note()
    return len(data) + data[0]


@step(queue=QUEUE)
async def total(values: list[int]) -> int:
    note()
    return sum(values)


shout = remote_step("faults_shout", queue=REMOTE_QUEUE)


@pipeline
def chain(tag: int, n: int, ms: int) -> object:
    value = origin(tag)
    for i in range(n):
        value = add.alias(f"add{i}")(value, 1, ms)
    return value


@pipeline
def fan_out(tag: int, n: int, ms: int) -> object:
    root = origin(tag)
    return [add.alias(f"add{i}")(root, i, ms) for i in range(n)]


@pipeline
def fan_in(tag: int, n: int, ms: int) -> object:
    return total([add.alias(f"add{i}")(tag, i, ms) for i in range(n)])


@pipeline
def retrying(tag: int, n: int, succeed_on: int) -> object:
    root = origin(tag)
    return total([flaky.alias(f"flaky{i}")(root, succeed_on) for i in range(n)])


@pipeline
def failing(tag: int, n: int, ms: int) -> object:
    """``doomed`` fails the run; ``after_doomed`` and ``total`` are skipped."""
    root = origin(tag)
    after = add.alias("after_doomed")(doomed(root), 1, ms)
    return total([after, *(add.alias(f"add{i}")(root, i, ms) for i in range(n))])


@pipeline
def slow_steps(tag: int, n: int, seconds: float) -> object:
    root = origin(tag)
    return total([slow.alias(f"slow{i}")(root, seconds) for i in range(n)])


@pipeline
def remote(tag: int, n: int) -> object:
    root = origin(tag)
    return total([shout.alias(f"shout{i}")(root) for i in range(n)])


@pipeline
def sync_chain(tag: int, n: int, ms: int) -> object:
    value = origin(tag)
    for i in range(n):
        value = crunch.alias(f"crunch{i}")(value, ms)
    return value


@pipeline
def mixed(tag: int, ms: int, seconds: float, succeed_on: int) -> object:
    root = origin(tag)
    parts = [
        slow(root, seconds),
        flaky(root, succeed_on),
        shout(root),
        crunch(root, ms),
        measure(blob(root)),
    ]
    return add(total(parts), 1, ms)


@pipeline
def gated(tag: int, seconds: float, n: int, ms: int) -> object:
    """A long step early on: the runs the campaign cancels are still in flight."""
    opened = slow.alias("gate")(origin(tag), seconds)
    return total([add.alias(f"add{i}")(opened, i, ms) for i in range(n)])


@pipeline
def poisoned(tag: int) -> object:
    """``nul`` fails the run with a NUL in its error; ``add`` is skipped."""
    return add(nul(origin(tag)), 1, 1)
