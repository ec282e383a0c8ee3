"""A step that announces it started (by creating ``marker``) and then waits a long time."""

import asyncio
from pathlib import Path

from aexec import pipeline, step


@step
async def wait_long(marker: str) -> None:
    await asyncio.to_thread(Path(marker).touch)
    await asyncio.sleep(60)


@pipeline
def slow(marker: str) -> None:
    wait_long(marker)
