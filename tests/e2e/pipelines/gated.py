"""A step that announces it started (creates ``marker``) and finishes once ``release``
exists: a test controls exactly when it ends."""

import time
from pathlib import Path

from aexec import pipeline, step


@step(queue="gated")
def wait_for_release(marker: str, release: str) -> str:
    Path(marker).touch()
    deadline = time.monotonic() + 60.0
    while not Path(release).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} never appeared")
        time.sleep(0.02)
    return "released"


@pipeline
def gated(marker: str, release: str) -> object:
    return wait_for_release(marker, release)
