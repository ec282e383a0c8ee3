"""A step limited to 4 starts a second (a token bucket of 4, refilled at 4/s), shared by
every coordinator of a store, that appends the time it started (and its run) to
``dir/starts``."""

import time
from pathlib import Path

from aexec import current, pipeline, step


def _record(folder: Path, run_id: str) -> None:
    with open(folder / "starts", "a", encoding="utf-8") as starts:
        starts.write(f"{time.time():.6f} {run_id}\n")


@step(rate_limit="4/s", queue="rated")
async def rated(folder: str, i: int) -> int:
    _record(Path(folder), current().run_id)
    return i


@pipeline
def paced(folder: str, n: int = 5) -> object:
    return [rated.alias(f"r{i}")(folder, i) for i in range(n)]
