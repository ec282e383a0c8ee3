"""Version 1 of the ``reconstruct`` service, as its own code base would define it."""

from aexec import step


@step(name="reconstruct", queue="repo", version="1")
def reconstruct(url: str) -> str:
    return f"v1:{url}"
