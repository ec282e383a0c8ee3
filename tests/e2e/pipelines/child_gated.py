"""A parent whose child run holds a step until the file ``release`` exists (after
creating ``marker``): a test stops or cancels the parent while the child runs."""

import time
from pathlib import Path

from aexec import pipeline, step


@step
def prepare(node: str) -> str:
    return f"{node} prepared"


@step
def held(prepared: str, marker: str, release: str) -> str:
    Path(marker).touch()
    deadline = time.monotonic() + 60.0
    while not Path(release).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} never appeared")
        time.sleep(0.02)
    return f"{prepared}, released"


@pipeline
def child(prepared: str, marker: str, release: str) -> object:
    return held(prepared, marker, release)


@pipeline
def parent(node: str, marker: str, release: str) -> object:
    return child(prepare(node), marker, release, run_as_child=True)
