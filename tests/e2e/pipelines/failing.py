"""One step fails after a retry; its dependent is skipped, an independent step succeeds."""

from aexec import pipeline, step


@step(retries=1, retry_backoff=0.01, retry_jitter=False)
def boom() -> int:
    raise ValueError("boom")


@step
def after(value: int) -> int:
    return value + 1


@step
def independent() -> str:
    return "fine"


@pipeline
def failing() -> object:
    independent()
    return after(boom())
