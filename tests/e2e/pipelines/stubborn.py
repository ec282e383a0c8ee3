"""Sync steps for ``--pool process`` workers, each announcing its pid in ``where``:
``stubborn`` ignores its cancellation, ``polite`` stops once cancelled, ``steady`` runs
until the file ``release`` appears."""

import os
import time
from pathlib import Path

import aexec
from aexec import pipeline, step


def _started(where: str, name: str) -> None:
    tmp = Path(where, f"{name}.tmp")
    tmp.write_text(str(os.getpid()))
    tmp.rename(Path(where, f"{name}.pid"))


@step
def stubborn(where: str) -> None:
    _started(where, "stubborn")
    while True:
        time.sleep(0.02)


@step
def polite(where: str) -> str:
    _started(where, "polite")
    while not aexec.current().cancelled:
        time.sleep(0.01)
    Path(where, "polite.stopped").touch()
    return "stopped"


@step
def steady(where: str) -> int:
    _started(where, "steady")
    deadline = time.monotonic() + 60
    while not Path(where, "release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


@pipeline
def doomed(where: str) -> None:
    stubborn(where)


@pipeline
def cooperative(where: str) -> None:
    polite(where)


@pipeline
def sibling(where: str) -> int:
    return steady(where)
