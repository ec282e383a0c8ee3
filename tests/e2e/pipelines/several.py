"""Two pipelines in one file: ``aexec run`` needs ``-P NAME`` to choose."""

import datetime as dt

from aexec import pipeline, step


@step
def greet(name: str) -> str:
    return f"hello {name}"


@step
def odd_values() -> dict[str, object]:
    return {
        "blob": b"\xff\x00\x01",
        "text": b"plain",
        "when": dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
        "tags": {"b", "a"},
        "pair": (1, 2),
    }


@pipeline
def alpha(name: str = "world") -> object:
    return greet(name)


@pipeline
def beta() -> object:
    return odd_values()
