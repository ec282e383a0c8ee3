"""A pipeline with a required integer parameter: the sum of the first ``n`` squares."""

from aexec import pipeline, step


@step
def square(i: int) -> int:
    return i * i


@step
async def total(values: list[int], offset: int = 0) -> int:
    return sum(values) + offset


@pipeline
def sum_of_squares(n: int, offset: int = 0) -> object:
    return total([square.alias(f"square_{i}")(i) for i in range(n)], offset)
