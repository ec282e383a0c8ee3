"""Version 2 of the ``reconstruct`` service, released on its own."""

from aexec import step


@step(name="reconstruct", queue="repo", version="2")
def reconstruct(url: str) -> str:
    return f"v2:{url}"
