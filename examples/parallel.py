"""The dagster-celery quick start: 50 independent no-op steps.

python -m aexec run examples/parallel.py
"""

from aexec import pipeline, step


@step
async def not_much() -> None:
    return None


@pipeline
def parallel() -> None:
    for i in range(50):
        not_much.alias(f"not_much_{i}")()
