"""A Celery-style chain of chords: noop, n x [10 parallel → 1], noop.

n=1000 gives 11,002 steps (the OVHcloud "big canvas" workload that Celery canvas and
celery-dyrygent struggle with).

    python -m aexec run examples/chords.py -p n=1000
"""

from aexec import pipeline, step


@step
async def noop(*args: object) -> bool:
    return True


@step
async def join(results: list[bool]) -> bool:
    return all(results)


@pipeline
def chain_of_chords(n: int = 100, width: int = 10) -> object:
    previous = noop.alias("start")()
    for i in range(n):
        parallel = [noop.alias(f"c{i}_p{j}")(previous) for j in range(width)]
        previous = join.alias(f"c{i}_join")(parallel)
    return noop.alias("end")(previous)
