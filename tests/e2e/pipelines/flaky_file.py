"""A step that fails while a marker file exists; every step notes each time it runs, in
``ran.log`` beside the marker (the folder is the ``where`` parameter)."""

from pathlib import Path

from aexec import pipeline, step


def _note(where: str, name: str) -> None:
    with open(Path(where) / "ran.log", "a", encoding="utf-8") as log:
        log.write(name + "\n")


@step
def fetch(where: str) -> int:
    _note(where, "fetch")
    return 20


@step
def check(where: str, value: int) -> int:
    _note(where, "check")
    if (Path(where) / "broken").exists():
        raise RuntimeError("check is broken")
    return value + 1


@step
def report(where: str, value: int, scale: int) -> int:
    _note(where, "report")
    return value * scale


@pipeline
def flaky(where: str, scale: int = 2) -> object:
    return report(where, check(where, fetch(where)), scale)
