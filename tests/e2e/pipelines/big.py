"""Outputs too large to travel inline (with a small ``AEXEC_INLINE_THRESHOLD``): each goes to
the object store under its run's prefix."""

from aexec import pipeline, step


@step
def blob(size: int, fill: str) -> str:
    return fill * size


@step
def length(text: str) -> int:
    return len(text)


@pipeline
def big(size: int = 10_000) -> object:
    return [length(blob.alias("a")(size, "a")), length(blob.alias("b")(size, "b"))]
