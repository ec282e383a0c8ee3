"""A pipeline of remote steps only: their code lives in ``text_steps.py``, which this file
never imports; a worker started with ``-A text_steps.py`` runs them."""

from aexec import pipeline, remote_step

shout = remote_step("shout", queue="text")
measure = remote_step("measure", queue="text")


@pipeline
def remote(words: list[str]) -> object:
    shouted = shout(words, b"\x00\x01\xff")
    return {"shouted": shouted, "measured": measure(shouted)}
