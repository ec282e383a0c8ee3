"""Step caching: the expensive step runs once; later runs with the same inputs reuse its
output (the Geomagical pattern: hash the inputs, skip the expensive work).

    python -m aexec run examples/cached.py -p scene=kitchen     # runs `render`
    python -m aexec run examples/cached.py -p scene=kitchen     # `render` is cached
    python -m aexec runs show RUN_ID                            # NOTE: cached

Bump ``version`` when ``render``'s code changes: old entries no longer match.
"""

import hashlib

from aexec import pipeline, step


@step(cache=True, version="1")
def render(scene: str, size: int) -> str:
    digest = hashlib.sha256(scene.encode())
    for _ in range(200_000):  # the expensive part
        digest = hashlib.sha256(digest.digest())
    return f"{scene}@{size}: {digest.hexdigest()[:16]}"


@step
def publish(image: str) -> str:
    return f"published {image}"


@pipeline
def render_scene(scene: str = "kitchen", size: int = 512) -> object:
    return publish(render(scene, size))
