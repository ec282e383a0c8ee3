"""Many short steps and one fan-in: ``n`` steps of ~20 ms each, then ``total`` of their
values.  Every execution appends ``key attempt`` to ``log``."""

import asyncio
import os

from aexec import current, pipeline, step


def _note(log: str) -> None:
    ctx = current()
    # One short O_APPEND write per line: lines of concurrent steps never interleave.
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{ctx.step_key} {ctx.attempt}\n".encode())
    finally:
        os.close(fd)


@step(queue="swarm")
async def tick(i: int, log: str) -> int:
    _note(log)
    await asyncio.sleep(0.02)
    return i


@step(queue="swarm")
async def tally(values: list[int], log: str) -> int:
    _note(log)
    return sum(values)


@pipeline
def swarm(n: int, log: str) -> object:
    return tally([tick.alias(f"tick_{i}")(i, log) for i in range(n)], log)
