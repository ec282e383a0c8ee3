"""Map over a list known only at run time: one step per item, keys ``name[i]``.

    python -m aexec run examples/map.py -p n=10
    python -m aexec run examples/map.py -p n=10000     # 10,000 steps, expanded at run time

``discover`` returns the list; ``measure.map(...)`` becomes ``measure[0]``, ``measure[1]``,
... once it is known, and its handle is the list of their outputs, which ``summarise``
takes whole (fan-in) and ``grade.map(...)`` maps over again.
"""

from aexec import pipeline, step


@step
def discover(n: int) -> list[str]:
    return [f"node-{i:05d}" for i in range(n)]


@step
def measure(node: str, scale: int = 1) -> int:
    return (sum(map(ord, node)) % 97) * scale


@step
def grade(value: int) -> str:
    return "hot" if value > 80 else "ok"


@step
def summarise(values: list[int], grades: list[str]) -> dict[str, int]:
    return {"nodes": len(values), "total": sum(values), "hot": grades.count("hot")}


@pipeline
def survey(n: int = 10) -> object:
    values = measure.map(discover(n), scale=1)  # one step per node
    return summarise(values, grade.map(values))  # collect, and a map of the map
