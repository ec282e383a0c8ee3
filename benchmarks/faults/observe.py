"""Reading back what happened, once everything has stopped: every run in the store with
its steps, events, dependencies and result, through aexec's public reading API
(``Executor`` on the store and the objects), straight to the database (not through the
campaign's proxies).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aexec import AexecError
from benchmarks.faults.model import EventView, Expected, RunView, StepView
from benchmarks.faults.workload import expect

if TYPE_CHECKING:
    from aexec import Executor
    from aexec.events import Event
    from aexec.plan import Plan
    from aexec.store import RunRecord, StepRecord

log = logging.getLogger(__name__)

MAX_RUNS = 1_000_000
READ_TIMEOUT = 30.0


async def run_statuses(executor: Executor) -> dict[str, str]:
    """Run id → status, for every run in the store."""
    records = await executor.list_runs(limit=MAX_RUNS)
    return {r.run_id: str(r.status) for r in records}


async def read_runs(executor: Executor) -> dict[str, RunView]:
    """Every run in the store, as the checker sees it."""
    plans: dict[str, Plan | None] = {}
    runs: dict[str, RunView] = {}
    for record in await executor.list_runs(limit=MAX_RUNS):
        async with asyncio.timeout(READ_TIMEOUT):
            steps = await executor.get_steps(record.run_id)
            events = await executor.get_events(record.run_id)
            if record.plan_digest not in plans:
                plans[record.plan_digest] = await executor.store.get_plan(record.plan_digest)
            view = _view(record, steps, events, plans[record.plan_digest])
            if view.status == "succeeded":
                try:
                    view.result = await executor.load_result(record)
                except (AexecError, ValueError, TypeError) as exc:
                    view.result_error = f"cannot read the result: {exc}"
        runs[record.run_id] = view
    return runs


def _view(
    record: RunRecord, steps: Iterable[StepRecord], events: Iterable[Event], plan: Plan | None
) -> RunView:
    deps: dict[str, tuple[str, ...]] = {}
    if plan is not None:
        keys = [s.key for s in plan.steps]
        deps = {s.key: tuple(keys[d] for d in s.deps) for s in plan.steps}
    return RunView(
        record.run_id,
        record.pipeline,
        str(record.status),
        dict(record.params),
        record.created_at,
        record.finished_at,
        {
            s.key: StepView(
                s.key, str(s.status), s.attempts, None if s.error is None else str(s.error)
            )
            for s in steps
        },
        [EventView(e.seq, e.ts, str(e.kind), e.step, e.attempt, dict(e.data)) for e in events],
        deps,
        owner=record.owner,
        lease_until=record.lease_until,
    )


def expectations(runs: dict[str, RunView], exclude: Iterable[str] = ()) -> dict[str, Expected]:
    """What each run in the store must end as, from its pipeline and parameters."""
    left_out = set(exclude)
    found: dict[str, Expected] = {}
    for run_id, run in runs.items():
        expected = expect(run.pipeline, run.params) if run_id not in left_out else None
        if expected is not None:
            found[run_id] = expected
    return found


def counts(values: Iterable[Any]) -> dict[str, int]:
    tally: dict[str, int] = {}
    for value in values:
        tally[str(value)] = tally.get(str(value), 0) + 1
    return tally
