"""A step held until a file exists, that logs every execution: one line
``attempt pid`` appended to ``log`` when it starts, so a test knows which worker process
runs which attempt, and how many times the step ran."""

import os
import time
from pathlib import Path

from aexec import current, pipeline, step


@step(queue="held")
def hold(log: str, release: str) -> str:
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"{current().attempt} {os.getpid()}\n")
    deadline = time.monotonic() + 120.0
    while not Path(release).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} never appeared")
        time.sleep(0.02)
    return "released"


@pipeline
def held(log: str, release: str) -> object:
    return hold(log, release)
