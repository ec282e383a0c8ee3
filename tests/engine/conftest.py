from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import aexec.testing
from aexec.executor import Executor
from aexec.store.memory import MemoryStore


@pytest.fixture
async def ex() -> AsyncIterator[Executor]:
    async with aexec.testing.executor(heartbeat_interval=0.05) as executor:
        yield executor


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    """An open memory store, closed after the test."""
    s = MemoryStore()
    await s.open()
    yield s
    await s.close()
