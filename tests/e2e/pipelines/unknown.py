"""A remote step on the ``text`` queue that no worker serves, beside one that a worker does."""

from aexec import pipeline, remote_step

shout = remote_step("shout", queue="text")
missing = remote_step("no_such_step", queue="text")


@pipeline
def unknown() -> object:
    return [shout(["ok"], b"\x01"), missing()]
