"""Steps that print, log, report progress and emit events while they run: ``talk`` goes on
until ``release`` exists, so a test can watch its output live."""

import logging
import time
from pathlib import Path

import aexec
from aexec import pipeline, step

log = logging.getLogger("talking")


@step(queue="talking")
def talk(release: str) -> str:
    print("hello from talk")
    log.info("working on %s", aexec.current().step_key)
    aexec.current().progress(0.5, "half way")
    aexec.current().emit("rows", {"n": 3})
    deadline = time.monotonic() + 60.0
    while not Path(release).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} never appeared")
        time.sleep(0.02)
    print("bye from talk")
    return "talked"


@step(queue="talking")
async def murmur() -> None:
    print("murmur, murmur")
    log.warning("a murmur")


@pipeline
def talking(release: str) -> object:
    murmur()
    return talk(release)
