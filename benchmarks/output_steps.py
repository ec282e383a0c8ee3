"""Steps of ``python -m benchmarks.output``: no-op steps, and one that prints a lot."""

from __future__ import annotations

from aexec import pipeline, step


@step
async def noop(i: int) -> int:
    return i


@step
def chatty(lines: int) -> int:
    for n in range(lines):
        print(f"chatty line {n} of {lines}: some text a step might print")
    return lines


@pipeline
def others(n: int = 1000) -> object:
    return [noop.alias(f"noop_{i}")(i) for i in range(n)]


@pipeline
def talker(lines: int = 10_000) -> object:
    return chatty(lines)
