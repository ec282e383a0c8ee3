from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from aexec.config import Settings
from aexec.executor import Executor


@pytest.fixture
def settings() -> Settings:
    return Settings(store="memory://", objects="memory://", heartbeat_interval=0.05)


@pytest.fixture
async def ex(settings: Settings) -> AsyncIterator[Executor]:
    async with Executor(settings) as executor:
        yield executor
