"""Pipelines that pick the version of a remote step they use (or take whichever serves)."""

from aexec import pipeline, remote_step

reconstruct_v2 = remote_step("reconstruct", queue="repo", version="2")
reconstruct_any = remote_step("reconstruct", queue="repo")


@pipeline
def room_v2(url: str = "u") -> object:
    return reconstruct_v2(url=url)


@pipeline
def room_any(url: str = "u") -> object:
    return reconstruct_any(url=url)
