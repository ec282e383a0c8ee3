"""Fan-in: 100 additions feed one sum (a Celery chord).  The result is 9900.

python -m aexec run examples/fan_in.py
"""

from aexec import pipeline, step


@step
async def add(a: int, b: int) -> int:
    return a + b


@step
async def total(values: list[int]) -> int:
    return sum(values)


@pipeline
def fan_in(n: int = 100) -> object:
    return total([add.alias(f"add_{i}")(i, i) for i in range(n)])
