from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import aexec.testing
from aexec.executor import Executor


@pytest.fixture
async def ex() -> AsyncIterator[Executor]:
    async with aexec.testing.executor(heartbeat_interval=0.05) as executor:
        yield executor
