"""The benchmark workloads as aexec pipelines.

Benchmark workers load this file (``aexec worker start -A benchmarks/workloads.py``) and the
benchmark's coordinator imports it to compile the pipelines: both sides agree on the step
names (``noop``, ``add``, ``total``, ``join``, ``items``).  Every step is an async no-op
(or nearly), so what is measured is the executor, not the work.
"""

from __future__ import annotations

from aexec import pipeline, step


@step
async def noop(*args: object) -> bool:
    return True


@step
async def add(a: int, b: int) -> int:
    return a + b


@step
async def total(values: list[int]) -> int:
    return sum(values)


@step
async def join(results: list[bool]) -> bool:
    return all(results)


@pipeline
def roundtrip() -> object:
    """One step: the latency of a single round trip through the executor."""
    return noop()


@pipeline
def independent(n: int = 1000) -> None:
    """``n`` independent no-op steps (also the dagster-celery quick start for n=50)."""
    for i in range(n):
        noop.alias(f"s{i}")()


@pipeline
def chord(n: int = 100) -> object:
    """``n`` additions fanned into their sum (a Celery chord); the result is n(n-1)."""
    return total([add.alias(f"add_{i}")(i, i) for i in range(n)])


@pipeline
def chain_of_chords(n: int = 100, width: int = 10) -> object:
    """noop, n x [width parallel -> 1], noop: n*(width+1)+2 steps."""
    previous = noop.alias("start")()
    for i in range(n):
        parallel = [noop.alias(f"c{i}_p{j}")(previous) for j in range(width)]
        previous = join.alias(f"c{i}_join")(parallel)
    return noop.alias("end")(previous)


@step
async def items(n: int) -> list[int]:
    return list(range(n))


@pipeline
def fan_out(n: int = 10_000) -> object:
    """root -> ``n`` no-op steps -> one join, written statically (``n`` + 2 steps)."""
    root = noop.alias("root")()
    return join([noop.alias(f"s{i}")(root) for i in range(n)])


@pipeline
def mapped(n: int = 10_000) -> object:
    """The shape of :func:`fan_out` as a map: the ``n`` steps are added at run time, one
    per item of the list ``items`` returns (plus the map's own row, which collects)."""
    return join(noop.map(items(n)))
