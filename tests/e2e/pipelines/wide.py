"""A fan-in whose inputs, each small enough to travel inline, add up to more than one
message may carry: ``n`` outputs of ``size`` bytes into one step."""

from aexec import pipeline, step


@step
def piece(i: int, size: int) -> bytes:
    return bytes([i % 251]) * size


@step
def measure(parts: list[bytes]) -> list[int]:
    return [len(parts), sum(len(p) for p in parts), sum(p[0] for p in parts)]


@pipeline
def wide(n: int = 1100, size: int = 64_000) -> object:
    return measure([piece.alias(f"p{i}")(i, size) for i in range(n)])
