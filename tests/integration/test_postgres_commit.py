"""An append whose COMMIT reached PostgreSQL but whose answer was lost (the link dropped
during COMMIT) is found committed, not retried: a batch is never recorded twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from aexec.events import Event, EventKind
from aexec.plan import StepSpec, build
from aexec.store import RunRecord
from aexec.store.postgres import PostgresStore

pytestmark = pytest.mark.postgres

PLAN = build("p", [StepSpec("a", "add")])


class LostCommitAnswer(PostgresStore):
    """Its next append commits, then fails as if the link dropped before the answer came."""

    lose_next = False

    @asynccontextmanager
    async def _transaction(self, action: str, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async with super()._transaction(action, *args, **kwargs) as conn:
            yield conn
        if self.lose_next and action == "append events":
            self.lose_next = False
            raise self._error(action, ConnectionResetError("connection lost during COMMIT"))


async def test_an_append_whose_commit_answer_was_lost_is_found_committed_once(
    postgres_dsn: str,
) -> None:
    store = LostCommitAnswer(postgres_dsn)
    async with store:
        await store.create_run(RunRecord("r-1", PLAN.pipeline, PLAN.digest, created_at=1.0), PLAN)
        dispatched = Event(EventKind.STEP_DISPATCHED, "r-1", 2.0, "a", 1)
        store.lose_next = True
        await store.append([dispatched], confirmed=[("r-1", "a", 1)])
        assert not store.lose_next  # the answer was lost, and append found it committed
        assert dispatched.seq > 0
        succeeded = Event(EventKind.STEP_SUCCEEDED, "r-1", 3.0, "a", 1, output=b"\x01")
        await store.append([succeeded])  # the pool works on
        kinds = [e.kind for e in await store.get_events("r-1")]
        (step,) = await store.get_steps("r-1")
    assert kinds == [EventKind.RUN_SUBMITTED, EventKind.STEP_DISPATCHED, EventKind.STEP_SUCCEEDED]
    assert step.confirmed == 1 and step.status == "succeeded"
