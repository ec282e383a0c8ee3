"""A remote step that no worker serves: its run waits with the step queued."""

from aexec import pipeline, remote_step

nobody = remote_step("nobody_serves_this", queue="unserved")


@pipeline
def unserved() -> object:
    return nobody()
