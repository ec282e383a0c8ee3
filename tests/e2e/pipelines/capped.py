"""A step capped at 2 running attempts that records how many of its attempts run at once,
across every process: each attempt, under a lock file, adds its name to ``dir/running``
and appends the count it saw (and its run) to ``dir/seen``, then holds for a moment and
takes its name out."""

import asyncio
import fcntl
import os
from pathlib import Path

from aexec import current, pipeline, step


def _change(folder: Path, name: str, enter: bool) -> None:
    with open(folder / "lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        running = folder / "running"
        names = running.read_text().split() if running.exists() else []
        if enter:
            names.append(name)
            with open(folder / "seen", "a", encoding="utf-8") as seen:
                seen.write(f"{len(names)} {name.split('-')[0]}\n")
        else:
            names.remove(name)
        running.write_text("\n".join(names))
        fcntl.flock(lock, fcntl.LOCK_UN)


@step(concurrency=2, queue="capped")
async def capped(folder: str, i: int) -> int:
    name = f"{current().run_id}-{i}-{os.getpid()}"
    _change(Path(folder), name, enter=True)
    try:
        await asyncio.sleep(0.2)
    finally:
        _change(Path(folder), name, enter=False)
    return i


@pipeline
def many(folder: str, n: int = 6) -> object:
    return [capped.alias(f"c{i}")(folder, i) for i in range(n)]
