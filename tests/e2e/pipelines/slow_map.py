"""A map whose items from ``hold_from`` on wait for the file ``release`` (when given),
then a map of the map: a test stops the coordinator while the first map is half done."""

import time
from pathlib import Path

from aexec import pipeline, step


@step
def discover(n: int) -> list[int]:
    return list(range(n))


@step
def measure(item: int, hold_from: int, release: str) -> int:
    deadline = time.monotonic() + 60.0
    while release and item >= hold_from and not Path(release).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} never appeared")
        time.sleep(0.02)
    return item * 2


@step
def grade(value: int) -> str:
    return "even" if value % 4 == 0 else "odd"


@step
def summarise(values: list[int], grades: list[str]) -> dict[str, int]:
    return {"items": len(values), "total": sum(values), "even": grades.count("even")}


@pipeline
def slow_map(n: int = 1000, hold_from: int = 0, release: str = "") -> object:
    values = measure.map(discover(n), hold_from, release)
    return summarise(values, grade.map(values))
