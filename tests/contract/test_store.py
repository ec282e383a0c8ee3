"""The run store contract: every adapter behaves the same.

The ``store`` fixture is parametrised over every adapter; to add one, add its name to
``ADAPTERS`` and a branch to the ``adapter`` fixture.  ``other_store`` is a second store on
the same data (another connection or pool; for the memory store, the store itself), for
what two coordinators or a coordinator and a CLI see of each other.  PostgreSQL tests take
a fresh database from ``tests/plugins/postgres.py``.  Tests at the end of the file are
specific to SQLite files and migrations.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aexec.errors import ConfigError, LeaseLostError, StoreError, StoreUnavailableError
from aexec.events import Event, EventKind, from_record, to_record
from aexec.limits import Rate
from aexec.objects.memory import MemoryObjectStore
from aexec.plan import Plan, StepSpec, build
from aexec.run import RemoteRun
from aexec.store import (
    Fence,
    Ownership,
    RunRecord,
    SlotFree,
    SlotTake,
    StepRecord,
    Store,
    fold,
    rows,
)
from aexec.store.memory import MemoryStore
from aexec.store.postgres import PostgresStore
from aexec.store.sqlite import SqliteStore, from_url, migrations
from aexec.types import ErrorInfo, RunStatus, StepStatus

ADAPTERS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
WAIT = 10.0  # seconds: the bound of every wait for something to happen

K = EventKind
PLAN = build("p", [StepSpec("a", "add"), StepSpec("b", "add", deps=("a",))])
BOOM = ErrorInfo("ValueError", "boom", "Traceback ...\nValueError: boom\n", retryable=False)


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """Makes unopened stores of one adapter, all on the same data."""
    if request.param == "memory":
        memory = MemoryStore()
        return lambda: memory
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "runs.db")
    if request.param == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        return lambda: PostgresStore(dsn)
    raise AssertionError(f"unknown store adapter {request.param!r}")


@pytest.fixture
async def store(adapter: Callable[[], Store]) -> AsyncIterator[Store]:
    s = adapter()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def other_store(adapter: Callable[[], Store], store: Store) -> AsyncIterator[Store]:
    s = adapter()
    if s is store:
        yield s
        return
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def new_run(run_id: str = "run-0001", plan: Plan = PLAN, **fields: Any) -> RunRecord:
    fields.setdefault("created_at", 100.0)
    fields.setdefault("plan_digest", plan.digest)
    return RunRecord(run_id=run_id, pipeline=plan.pipeline, **fields)


def ev(
    kind: EventKind,
    step: str | None = None,
    attempt: int = 0,
    *,
    run_id: str = "run-0001",
    ts: float = 200.0,
    output: bytes | None = None,
    **data: Any,
) -> Event:
    return Event(kind, run_id, ts, step=step, attempt=attempt, data=data, output=output)


async def started_run(store: Store, run_id: str = "run-0001") -> None:
    await store.create_run(new_run(run_id), PLAN)
    await store.append([ev(K.RUN_STARTED, run_id=run_id, ts=150.0)])


async def step_row(store: Store, key: str, run_id: str = "run-0001") -> StepRecord:
    steps = {s.key: s for s in await store.get_steps(run_id)}
    return steps[key]


async def run_row(store: Store, run_id: str = "run-0001") -> RunRecord:
    run = await store.get_run(run_id)
    assert run is not None
    return run


async def appended(store: Store, run_id: str = "run-0001") -> list[Event]:
    """The run's events after the run_submitted that creating it logged."""
    events = await store.get_events(run_id)
    assert events[0].kind is K.RUN_SUBMITTED
    return events[1:]


# -- runs ---------------------------------------------------------------------------------


async def test_a_created_run_reads_back_with_every_field(store: Store) -> None:
    run = new_run(
        status=RunStatus.RUNNING,
        priority=7,
        params={"url": "s3://x", "n": 4, "tags": ["a", "b"]},
        created_at=1.25,
        started_at=2.5,
        finished_at=None,
        result=b"\x01",
        error="earlier",
        owner="coordinator-1",
        lease_until=12.5,
        tags={"tenant": "acme", "team": "data"},
        parent="run-0000",
    )
    await store.create_run(run, PLAN)
    assert await store.get_run("run-0001") == run
    assert (await store.list_runs())[0] == run
    await store.release_runs("coordinator-1")
    assert await store.acquire_runs("coordinator-2", 5.0) == [
        replace(run, owner="coordinator-2", lease_until=ANY, epoch=2)
    ]


async def test_run_params_come_back_as_json_would_return_them(store: Store) -> None:
    await store.create_run(new_run(params={"pair": (1, 2), "nested": {"k": [None]}}), PLAN)
    assert (await run_row(store)).params == {"pair": [1, 2], "nested": {"k": [None]}}


async def test_run_params_json_has_no_type_for_are_kept_as_text(store: Store) -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5)
    await store.create_run(new_run(params={"when": when, "blob": b"\x00"}), PLAN)
    assert (await run_row(store)).params == {"when": str(when), "blob": str(b"\x00")}


async def test_run_params_with_keys_json_cannot_hold_are_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="JSON"):
        await store.create_run(new_run(params={(1, 2): "tuple key"}), PLAN)
    assert await store.get_run("run-0001") is None


async def test_records_read_back_are_copies(store: Store) -> None:
    await store.create_run(new_run(params={"xs": [1]}), PLAN)
    run = await run_row(store)
    run.params["xs"].append(2)
    run.status = RunStatus.FAILED
    (await store.get_steps("run-0001"))[0].status = StepStatus.FAILED
    assert await run_row(store) == new_run(params={"xs": [1]})
    assert (await step_row(store, "a")).status is StepStatus.PENDING


async def test_creating_a_run_twice_is_a_store_error(store: Store) -> None:
    await store.create_run(new_run(), PLAN)
    with pytest.raises(StoreError, match="already exists"):
        await store.create_run(new_run(priority=3), PLAN)
    assert (await run_row(store)).priority == 0


async def test_creating_a_run_logs_run_submitted_as_its_first_event(store: Store) -> None:
    submitted = await store.create_run(new_run(priority=7, created_at=12.5), PLAN)
    assert submitted == Event(
        K.RUN_SUBMITTED, "run-0001", 12.5, data={"priority": 7, "steps": 2}, seq=submitted.seq
    )
    assert submitted.seq > 0
    assert await store.get_events("run-0001") == [submitted]
    await store.append([ev(K.RUN_STARTED)])
    assert [e.kind for e in await store.get_events("run-0001")] == [K.RUN_SUBMITTED, K.RUN_STARTED]


async def test_a_run_that_cannot_be_created_logs_nothing(store: Store) -> None:
    first = await store.create_run(new_run(), PLAN)
    with pytest.raises(StoreError, match="already exists"):
        await store.create_run(new_run(priority=3), PLAN)
    with pytest.raises(StoreError, match="JSON"):
        await store.create_run(new_run("run-0002", params={(1, 2): "tuple key"}), PLAN)
    assert await store.get_events("run-0001") == [first]
    assert await store.get_events("run-0002") == []


async def test_a_run_created_by_an_append_is_recorded_with_its_events_in_one_transaction(
    store: Store,
) -> None:
    run = new_run(owner="c1", lease_until=50.0, created_at=12.5)
    submitted = rows.submitted(run, PLAN)
    started, dispatched = ev(K.RUN_STARTED, ts=13.0), ev(K.STEP_DISPATCHED, "a", 1, ts=13.0)
    await store.append(
        [submitted, started, dispatched], fence=Fence("c1", {run.run_id: 1}), created=[(run, PLAN)]
    )
    assert 0 < submitted.seq < started.seq < dispatched.seq
    assert await store.get_events(run.run_id) == [submitted, started, dispatched]
    row = await run_row(store)
    assert row == replace(run, status=RunStatus.RUNNING, started_at=13.0)
    assert [(s.key, s.status, s.attempts) for s in await store.get_steps(run.run_id)] == [
        ("a", StepStatus.QUEUED, 1),
        ("b", StepStatus.PENDING, 0),
    ]
    assert await store.get_plan(PLAN.digest) == PLAN


async def test_an_append_creating_a_run_its_fence_does_not_hold_commits_nothing(
    store: Store,
) -> None:
    run = new_run(owner="c2", lease_until=50.0)
    with pytest.raises(LeaseLostError):
        await store.append(
            [rows.submitted(run, PLAN), ev(K.RUN_STARTED)],
            fence=Fence("c1", {run.run_id: 1}),
            created=[(run, PLAN)],
        )
    assert await store.get_run(run.run_id) is None
    assert await store.get_events(run.run_id) == []


async def test_an_append_creating_a_run_that_exists_commits_nothing(store: Store) -> None:
    await started_run(store, "run-0002")
    await store.create_run(new_run(), PLAN)
    other = ev(K.STEP_DISPATCHED, "a", 1, run_id="run-0002")
    again = new_run(priority=3)
    with pytest.raises(StoreError, match="already exists"):
        await store.append(
            [rows.submitted(again, PLAN), other, ev(K.RUN_STARTED)], created=[(again, PLAN)]
        )
    assert (await run_row(store)).priority == 0
    assert [e.kind for e in await store.get_events("run-0001")] == [K.RUN_SUBMITTED]
    assert (await step_row(store, "a", "run-0002")).status is StepStatus.PENDING


async def test_a_run_must_name_the_digest_of_its_plan(store: Store) -> None:
    with pytest.raises(StoreError, match="plan"):
        await store.create_run(new_run(plan_digest="0" * 64), PLAN)


async def test_an_unknown_run_id_reads_as_none(store: Store) -> None:
    assert await store.get_run("nope-nope") is None
    assert await store.get_steps("nope-nope") == []
    assert await store.get_events("nope-nope") == []


async def test_a_unique_prefix_of_four_or_more_characters_finds_the_run(store: Store) -> None:
    await store.create_run(new_run("3f9a61c2"), PLAN)
    await store.create_run(new_run("77aa0000"), PLAN)
    assert (await run_row(store, "3f9a")).run_id == "3f9a61c2"
    assert (await run_row(store, "3f9a61")).run_id == "3f9a61c2"


async def test_a_prefix_shorter_than_four_characters_finds_nothing(store: Store) -> None:
    await store.create_run(new_run("3f9a61c2"), PLAN)
    assert await store.get_run("3f9") is None
    assert await store.get_run("") is None


async def test_a_prefix_of_several_runs_is_ambiguous(store: Store) -> None:
    await store.create_run(new_run("abcd1111"), PLAN)
    await store.create_run(new_run("abcd2222"), PLAN)
    with pytest.raises(StoreError, match="run id prefix 'abcd' is ambiguous"):
        await store.get_run("abcd")
    assert (await run_row(store, "abcd2")).run_id == "abcd2222"


async def test_an_exact_id_wins_over_longer_ids_it_prefixes(store: Store) -> None:
    await store.create_run(new_run("abcd"), PLAN)
    await store.create_run(new_run("abcde"), PLAN)
    await store.create_run(new_run("abcdef"), PLAN)
    assert (await run_row(store, "abcd")).run_id == "abcd"


async def test_prefix_lookup_is_case_sensitive_and_takes_no_wildcards(store: Store) -> None:
    await store.create_run(new_run("abcd1111"), PLAN)
    assert await store.get_run("ABCD") is None
    assert await store.get_run("ab%d") is None
    assert await store.get_run("ab_d") is None


async def test_list_runs_returns_the_most_recent_first(store: Store) -> None:
    for run_id, created in [("r1", 10.0), ("r3", 30.0), ("r2", 20.0)]:
        await store.create_run(new_run(run_id, created_at=created), PLAN)
    assert [r.run_id for r in await store.list_runs()] == ["r3", "r2", "r1"]


async def test_runs_created_at_the_same_time_list_newest_insert_first(store: Store) -> None:
    for run_id in ["b", "a", "c"]:
        await store.create_run(new_run(run_id, created_at=5.0), PLAN)
    assert [r.run_id for r in await store.list_runs()] == ["c", "a", "b"]


async def test_list_runs_stops_at_the_limit(store: Store) -> None:
    for i in range(5):
        await store.create_run(new_run(f"r{i}", created_at=float(i)), PLAN)
    assert [r.run_id for r in await store.list_runs(limit=2)] == ["r4", "r3"]
    assert await store.list_runs(limit=0) == []
    assert len(await store.list_runs()) == 5
    with pytest.raises(ValueError, match="limit"):
        await store.list_runs(limit=-1)


async def test_list_runs_filters_by_status(store: Store) -> None:
    for i in range(4):
        await store.create_run(new_run(f"r{i}", created_at=float(i)), PLAN)
    await store.append([ev(K.RUN_STARTED, run_id="r1"), ev(K.RUN_STARTED, run_id="r3")])
    running = await store.list_runs(status=RunStatus.RUNNING)
    assert [r.run_id for r in running] == ["r3", "r1"]
    assert [r.run_id for r in await store.list_runs(status=RunStatus.PENDING, limit=1)] == ["r2"]
    assert await store.list_runs(status=RunStatus.FAILED) == []


async def test_list_runs_filters_by_pipeline_and_status_together(store: Store) -> None:
    other = build("q", [StepSpec("x", "add")])
    for i in range(6):
        plan = PLAN if i % 2 else other
        await store.create_run(new_run(f"r{i}", plan, created_at=float(i)), plan)
    await store.append([ev(K.RUN_STARTED, run_id="r1"), ev(K.RUN_STARTED, run_id="r2")])
    assert [r.run_id for r in await store.list_runs(pipeline="p")] == ["r5", "r3", "r1"]
    assert [r.run_id for r in await store.list_runs(pipeline="q")] == ["r4", "r2", "r0"]
    running_p = await store.list_runs(pipeline="p", status=RunStatus.RUNNING)
    assert [r.run_id for r in running_p] == ["r1"]
    assert await store.list_runs(pipeline="nope") == []


async def test_list_runs_pages_with_an_offset(store: Store) -> None:
    for i in range(5):
        await store.create_run(new_run(f"r{i}", created_at=float(i)), PLAN)
    pages = [await store.list_runs(limit=2, offset=n) for n in (0, 2, 4, 6)]
    assert [[r.run_id for r in page] for page in pages] == [["r4", "r3"], ["r2", "r1"], ["r0"], []]
    with pytest.raises(ValueError, match="offset"):
        await store.list_runs(offset=-1)


async def test_tags_are_kept_with_the_run_and_list_runs_filters_by_one(store: Store) -> None:
    odd = {"team": "data", "note": 'quote " and ünïcode', "empty": ""}
    await store.create_run(new_run("r1", created_at=1.0, tags=odd), PLAN)
    await store.create_run(new_run("r2", created_at=2.0, tags={"team": "web"}), PLAN)
    await store.create_run(new_run("r3", created_at=3.0), PLAN)
    assert (await run_row(store, "r1")).tags == odd
    assert (await run_row(store, "r3")).tags == {}
    assert [r.tags for r in await store.list_runs()] == [{}, {"team": "web"}, odd]
    assert [r.run_id for r in await store.list_runs(tag=("team", "data"))] == ["r1"]
    assert [r.run_id for r in await store.list_runs(tag=("note", odd["note"]))] == ["r1"]
    assert [r.run_id for r in await store.list_runs(tag=("empty", ""))] == ["r1"]
    assert await store.list_runs(tag=("team", "nobody")) == []
    assert await store.list_runs(tag=("team", "data"), status=RunStatus.RUNNING) == []


async def test_step_counts_count_each_runs_steps_by_status(store: Store) -> None:
    await store.create_run(new_run("r1"), PLAN)
    await store.create_run(new_run("r2"), PLAN)
    await store.append([ev(K.STEP_DISPATCHED, "a", 1, run_id="r2")])
    counts = await store.step_counts(["r1", "r2", "nope-nope"])
    assert counts == {
        "r1": {StepStatus.PENDING: 2},
        "r2": {StepStatus.QUEUED: 1, StepStatus.PENDING: 1},
    }
    assert await store.step_counts([]) == {}


async def test_last_seq_is_the_seq_of_the_runs_latest_event(store: Store) -> None:
    submitted = await store.create_run(new_run(), PLAN)
    assert await store.last_seq("run-0001") == submitted.seq
    await store.append([ev(K.RUN_STARTED), ev(K.STEP_DISPATCHED, "a", 1)])
    events = await store.get_events("run-0001")
    assert await store.last_seq("run-0001") == events[-1].seq
    assert await store.last_seq("nope-nope") == 0


# -- plans and steps ----------------------------------------------------------------------


async def test_the_plan_round_trips_by_digest(store: Store) -> None:
    await store.create_run(new_run(), PLAN)
    plan = await store.get_plan(PLAN.digest)
    assert plan == PLAN
    assert plan is not None and plan.digest == PLAN.digest
    assert await store.get_plan("0" * 64) is None


async def test_runs_of_one_plan_share_it(store: Store) -> None:
    await store.create_run(new_run("r1"), PLAN)
    await store.create_run(new_run("r2"), PLAN)
    assert await store.get_plan(PLAN.digest) == PLAN
    assert (await run_row(store, "r2")).plan_digest == PLAN.digest


async def test_steps_are_created_pending_in_plan_order(store: Store) -> None:
    plan = build(
        "q",
        [
            StepSpec("total", "sum", queue="cpu", deps=("x", "y")),
            StepSpec("y", "load"),
            StepSpec("x", "load", queue="io"),
        ],
    )
    await store.create_run(new_run(plan=plan), plan)
    steps = await store.get_steps("run-0001")
    assert [s.key for s in steps] == [s.key for s in plan.steps] == ["y", "x", "total"]
    assert steps[2] == StepRecord(run_id="run-0001", key="total", name="sum", queue="cpu")
    assert {s.status for s in steps} == {StepStatus.PENDING}
    assert {s.attempts for s in steps} == {0}


# -- event effects ------------------------------------------------------------------------


async def test_run_submitted_is_logged_and_changes_no_row(store: Store) -> None:
    await store.create_run(new_run(), PLAN)
    await store.append([ev(K.RUN_SUBMITTED)])
    assert await run_row(store) == new_run()
    assert [e.kind for e in await appended(store)] == [K.RUN_SUBMITTED]


async def test_run_started_makes_the_run_running(store: Store) -> None:
    await store.create_run(new_run(), PLAN)
    await store.append([ev(K.RUN_STARTED, ts=150.0)])
    run = await run_row(store)
    assert (run.status, run.started_at, run.finished_at) == (RunStatus.RUNNING, 150.0, None)


async def test_run_started_again_keeps_the_first_start_time(store: Store) -> None:
    await started_run(store)
    await store.append([ev(K.RUN_STARTED, ts=999.0)])
    assert (await run_row(store)).started_at == 150.0


async def test_step_dispatched_queues_the_step_at_its_attempt(store: Store) -> None:
    await started_run(store)
    await store.append([ev(K.STEP_DISPATCHED, "a", 1)])
    a = await step_row(store, "a")
    assert (a.status, a.attempts) == (StepStatus.QUEUED, 1)
    assert (await step_row(store, "b")).status is StepStatus.PENDING


async def test_step_started_records_start_time_and_worker(store: Store) -> None:
    await started_run(store)
    await store.append([ev(K.STEP_DISPATCHED, "a", 1), ev(K.STEP_STARTED, "a", 1, worker="w-1")])
    a = await step_row(store, "a")
    assert (a.status, a.started_at, a.worker, a.attempts) == (
        StepStatus.RUNNING,
        200.0,
        "w-1",
        1,
    )


async def test_step_progress_is_logged_and_changes_no_row(store: Store) -> None:
    await started_run(store)
    await store.append([ev(K.STEP_DISPATCHED, "a", 1), ev(K.STEP_STARTED, "a", 1)])
    before = await step_row(store, "a")
    await store.append([ev(K.STEP_PROGRESS, "a", 1, ts=300.0, fraction=0.5, message="half")])
    assert await step_row(store, "a") == before
    last = (await store.get_events("run-0001"))[-1]
    assert (last.kind, last.data) == (K.STEP_PROGRESS, {"fraction": 0.5, "message": "half"})


async def test_step_retrying_keeps_the_error(store: Store) -> None:
    await started_run(store)
    await store.append(
        [ev(K.STEP_DISPATCHED, "a", 1), ev(K.STEP_RETRYING, "a", 1, error=BOOM.to_dict())]
    )
    a = await step_row(store, "a")
    assert (a.status, a.error, a.finished_at) == (StepStatus.RETRYING, BOOM, None)


async def test_a_retried_step_is_queued_at_the_next_attempt_keeping_the_last_error(
    store: Store,
) -> None:
    await started_run(store)
    await store.append(
        [
            ev(K.STEP_DISPATCHED, "a", 1),
            ev(K.STEP_RETRYING, "a", 1, error=BOOM.to_dict()),
            ev(K.STEP_DISPATCHED, "a", 2),
        ]
    )
    a = await step_row(store, "a")
    assert (a.status, a.attempts, a.error) == (StepStatus.QUEUED, 2, BOOM)


async def test_step_succeeded_keeps_the_output_and_clears_the_error(store: Store) -> None:
    await started_run(store)
    await store.append(
        [
            ev(K.STEP_DISPATCHED, "a", 1),
            ev(K.STEP_RETRYING, "a", 1, error=BOOM.to_dict()),
            ev(K.STEP_DISPATCHED, "a", 2),
            ev(K.STEP_SUCCEEDED, "a", 2, ts=250.0, output=b"\x92\x01\x02"),
        ]
    )
    a = await step_row(store, "a")
    assert (a.status, a.attempts, a.output, a.finished_at, a.error) == (
        StepStatus.SUCCEEDED,
        2,
        b"\x92\x01\x02",
        250.0,
        None,
    )


async def test_step_failed_keeps_the_error_as_error_info(store: Store) -> None:
    await started_run(store)
    await store.append(
        [ev(K.STEP_DISPATCHED, "a", 1), ev(K.STEP_FAILED, "a", 1, ts=260.0, error=BOOM.to_dict())]
    )
    a = await step_row(store, "a")
    assert (a.status, a.error, a.finished_at) == (StepStatus.FAILED, BOOM, 260.0)
    assert isinstance(a.error, ErrorInfo)
    assert a.error.traceback == BOOM.traceback
    assert a.error.retryable is False


async def test_a_bare_error_message_becomes_an_error_info(store: Store) -> None:
    await started_run(store)
    await store.append([ev(K.STEP_DISPATCHED, "a", 1), ev(K.STEP_FAILED, "a", 1, error="gone")])
    assert (await step_row(store, "a")).error == ErrorInfo("Error", "gone")


@pytest.mark.parametrize(
    ("kind", "status"),
    [(K.STEP_SKIPPED, StepStatus.SKIPPED), (K.STEP_CANCELLED, StepStatus.CANCELLED)],
)
async def test_skipped_and_cancelled_steps_take_that_status(
    store: Store, kind: EventKind, status: StepStatus
) -> None:
    await started_run(store)
    await store.append([ev(kind, "b")])
    b = await step_row(store, "b")
    assert (b.status, b.attempts, b.finished_at) == (status, 0, None)


async def test_run_succeeded_keeps_the_result_in_the_run(store: Store) -> None:
    await started_run(store)
    await store.append([ev(K.RUN_SUCCEEDED, ts=300.0, output=b"\xa2ok")])
    run = await run_row(store)
    assert (run.status, run.result, run.finished_at, run.error) == (
        RunStatus.SUCCEEDED,
        b"\xa2ok",
        300.0,
        None,
    )


@pytest.mark.parametrize(
    ("kind", "status"),
    [(K.RUN_FAILED, RunStatus.FAILED), (K.RUN_CANCELLED, RunStatus.CANCELLED)],
)
async def test_a_failed_or_cancelled_run_keeps_its_error_message(
    store: Store, kind: EventKind, status: RunStatus
) -> None:
    await started_run(store)
    await store.append([ev(kind, ts=300.0, error="a: ValueError: boom")])
    run = await run_row(store)
    assert (run.status, run.error, run.finished_at, run.result) == (
        status,
        "a: ValueError: boom",
        300.0,
        None,
    )


async def test_a_finished_run_never_changes_again(store: Store) -> None:
    await started_run(store)
    await store.append([ev(K.RUN_SUCCEEDED, ts=300.0, output=b"\x01")])
    await store.append(
        [
            ev(K.RUN_FAILED, ts=400.0, error="late"),
            ev(K.RUN_STARTED, ts=401.0),
            ev(K.RUN_SUCCEEDED, ts=402.0, output=b"\x02"),
        ]
    )
    run = await run_row(store)
    assert (run.status, run.result, run.error, run.finished_at, run.started_at) == (
        RunStatus.SUCCEEDED,
        b"\x01",
        None,
        300.0,
        150.0,
    )
    assert len(await appended(store)) == 5


async def test_events_of_one_batch_apply_in_order(store: Store) -> None:
    await store.create_run(new_run(), PLAN)
    await store.append(
        [
            ev(K.RUN_STARTED),
            ev(K.STEP_DISPATCHED, "a", 1),
            ev(K.STEP_STARTED, "a", 1, worker="w"),
            ev(K.STEP_SUCCEEDED, "a", 1, output=b"\x01"),
            ev(K.STEP_DISPATCHED, "b", 1),
            ev(K.STEP_FAILED, "b", 1, error=BOOM.to_dict()),
            ev(K.RUN_FAILED, error="b failed"),
        ]
    )
    steps = await store.get_steps("run-0001")
    assert [(s.key, s.status, s.attempts) for s in steps] == [
        ("a", StepStatus.SUCCEEDED, 1),
        ("b", StepStatus.FAILED, 1),
    ]
    assert (await run_row(store)).status is RunStatus.FAILED


async def test_one_batch_may_carry_events_of_several_runs(store: Store) -> None:
    await store.create_run(new_run("r1"), PLAN)
    await store.create_run(new_run("r2"), PLAN)
    await store.append(
        [
            ev(K.STEP_DISPATCHED, "a", 1, run_id="r1"),
            ev(K.STEP_DISPATCHED, "a", 3, run_id="r2"),
            ev(K.STEP_SUCCEEDED, "a", 1, run_id="r1", output=b"\x01"),
        ]
    )
    assert (await step_row(store, "a", "r1")).status is StepStatus.SUCCEEDED
    r2a = await step_row(store, "a", "r2")
    assert (r2a.status, r2a.attempts) == (StepStatus.QUEUED, 3)
    assert [e.kind for e in await appended(store, "r2")] == [K.STEP_DISPATCHED]


async def test_an_event_for_an_unknown_step_is_logged_and_changes_no_row(store: Store) -> None:
    await started_run(store)
    await store.append([ev(K.STEP_SUCCEEDED, "zzz", 1, output=b"\x01")])
    assert {s.status for s in await store.get_steps("run-0001")} == {StepStatus.PENDING}
    assert (await store.get_events("run-0001"))[-1].step == "zzz"


# -- compare-and-set on the attempt -------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    [
        K.STEP_DISPATCHED,
        K.STEP_STARTED,
        K.STEP_RETRYING,
        K.STEP_SUCCEEDED,
        K.STEP_FAILED,
        K.STEP_SKIPPED,
        K.STEP_CANCELLED,
    ],
)
async def test_an_event_of_an_older_attempt_is_logged_but_changes_no_row(
    store: Store, kind: EventKind
) -> None:
    await started_run(store)
    await store.append([ev(K.STEP_DISPATCHED, "a", 1), ev(K.STEP_DISPATCHED, "a", 2)])
    before = await step_row(store, "a")
    stale = ev(kind, "a", 1, ts=300.0, output=b"\x01", worker="old", error=BOOM.to_dict())
    await store.append([stale])
    assert await step_row(store, "a") == before
    logged = (await store.get_events("run-0001"))[-1]
    assert (logged.kind, logged.attempt, logged.seq) == (kind, 1, stale.seq)


async def test_an_event_of_a_newer_attempt_moves_the_step_to_that_attempt(store: Store) -> None:
    await started_run(store)
    await store.append([ev(K.STEP_DISPATCHED, "a", 1), ev(K.STEP_STARTED, "a", 2, worker="w")])
    a = await step_row(store, "a")
    assert (a.status, a.attempts) == (StepStatus.RUNNING, 2)


async def test_a_duplicate_success_keeps_the_first_output(store: Store) -> None:
    await started_run(store)
    await store.append(
        [ev(K.STEP_DISPATCHED, "a", 1), ev(K.STEP_SUCCEEDED, "a", 1, ts=210.0, output=b"\x01")]
    )
    await store.append([ev(K.STEP_SUCCEEDED, "a", 1, ts=220.0, output=b"\x02")])
    a = await step_row(store, "a")
    assert (a.output, a.finished_at) == (b"\x01", 210.0)
    assert [e.kind for e in await store.get_events("run-0001")].count(K.STEP_SUCCEEDED) == 2


@pytest.mark.parametrize(
    "kind",
    [
        K.STEP_DISPATCHED,
        K.STEP_STARTED,
        K.STEP_RETRYING,
        K.STEP_FAILED,
        K.STEP_SKIPPED,
        K.STEP_CANCELLED,
    ],
)
async def test_a_succeeded_step_ignores_later_events_even_of_newer_attempts(
    store: Store, kind: EventKind
) -> None:
    await started_run(store)
    await store.append(
        [ev(K.STEP_DISPATCHED, "a", 1), ev(K.STEP_SUCCEEDED, "a", 1, output=b"\x01")]
    )
    before = await step_row(store, "a")
    await store.append([ev(kind, "a", 2, error=BOOM.to_dict(), worker="w")])
    assert await step_row(store, "a") == before


async def test_a_failed_step_is_not_revived_by_a_late_success(store: Store) -> None:
    await started_run(store)
    await store.append(
        [ev(K.STEP_DISPATCHED, "a", 1), ev(K.STEP_FAILED, "a", 1, error=BOOM.to_dict())]
    )
    await store.append([ev(K.STEP_SUCCEEDED, "a", 1, output=b"\x01")])
    a = await step_row(store, "a")
    assert (a.status, a.output, a.error) == (StepStatus.FAILED, None, BOOM)


# -- the log ------------------------------------------------------------------------------


async def test_append_assigns_increasing_seqs_to_the_events_given(store: Store) -> None:
    await started_run(store)
    first = [ev(K.STEP_DISPATCHED, "a", 1), ev(K.STEP_STARTED, "a", 1)]
    second = [ev(K.STEP_SUCCEEDED, "a", 1, output=b"\x01")]
    await store.append(first)
    await store.append(second)
    seqs = [e.seq for e in first + second]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3
    assert seqs[0] > 0


async def test_seqs_increase_within_each_run_of_an_interleaved_log(store: Store) -> None:
    await store.create_run(new_run("r1"), PLAN)
    await store.create_run(new_run("r2"), PLAN)
    for _ in range(3):
        await store.append([ev(K.STEP_PROGRESS, "a", run_id="r1")])
        await store.append([ev(K.STEP_PROGRESS, "a", run_id="r2")])
    for run_id in ("r1", "r2"):
        seqs = [e.seq for e in await appended(store, run_id)]
        assert len(seqs) == 3
        assert seqs == sorted(set(seqs))


async def test_get_events_returns_what_was_appended_oldest_first(store: Store) -> None:
    await store.create_run(new_run(), PLAN)
    batch = [
        ev(K.RUN_STARTED, ts=1.5),
        ev(K.STEP_DISPATCHED, "a", 1, ts=2.5, queue="default"),
        ev(K.STEP_STARTED, "a", 1, ts=3.5, worker="w-1", pid=42),
    ]
    await store.append(batch)
    events = await appended(store)
    assert events == batch
    assert all(isinstance(e.kind, EventKind) for e in events)


async def test_get_events_pages_with_after_and_limit(store: Store) -> None:
    submitted = await store.create_run(new_run(), PLAN)
    batch = [ev(K.STEP_PROGRESS, "a", ts=float(i), i=i) for i in range(10)]
    await store.append(batch)
    seqs = [e.seq for e in batch]
    first = await store.get_events("run-0001", after=submitted.seq, limit=3)
    assert [e.seq for e in first] == seqs[:3]
    page = await store.get_events("run-0001", after=seqs[2], limit=4)
    assert [e.data["i"] for e in page] == [3, 4, 5, 6]
    assert [e.seq for e in await store.get_events("run-0001", after=seqs[6])] == seqs[7:]
    assert await store.get_events("run-0001", after=seqs[-1]) == []
    assert await store.get_events("run-0001", limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        await store.get_events("run-0001", limit=-1)


async def test_outputs_and_results_stay_in_rows_not_in_the_log(store: Store) -> None:
    await started_run(store)
    await store.append(
        [
            ev(K.STEP_DISPATCHED, "a", 1),
            ev(K.STEP_SUCCEEDED, "a", 1, output=b"step-out"),
            ev(K.RUN_SUCCEEDED, output=b"run-out"),
        ]
    )
    assert all(e.output is None for e in await store.get_events("run-0001"))
    assert (await step_row(store, "a")).output == b"step-out"
    assert (await run_row(store)).result == b"run-out"


async def test_logged_error_data_round_trips(store: Store) -> None:
    await started_run(store)
    await store.append([ev(K.STEP_FAILED, "a", 0, error=BOOM.to_dict())])
    logged = (await store.get_events("run-0001"))[-1]
    assert ErrorInfo.from_dict(logged.data["error"]) == BOOM


async def test_an_empty_batch_is_a_no_op(store: Store) -> None:
    await store.create_run(new_run(), PLAN)
    await store.append([])
    assert await appended(store) == []


async def test_a_batch_naming_an_unknown_run_fails_whole(store: Store) -> None:
    await store.create_run(new_run(), PLAN)
    batch = [ev(K.RUN_STARTED), ev(K.RUN_STARTED, run_id="ghost-run")]
    with pytest.raises(StoreError, match="ghost-run"):
        await store.append(batch)
    assert await appended(store) == []
    assert (await run_row(store)).status is RunStatus.PENDING
    assert [e.seq for e in batch] == [0, 0]


async def test_event_data_json_has_no_type_for_is_logged_as_text(store: Store) -> None:
    await store.create_run(new_run(), PLAN)
    await store.append([ev(K.STEP_PROGRESS, "a", tags={"x"}, blob=b"\x00")])
    assert (await appended(store))[0].data == {"tags": "{'x'}", "blob": "b'\\x00'"}


async def test_a_batch_with_data_json_cannot_hold_fails_whole(store: Store) -> None:
    await store.create_run(new_run(), PLAN)
    bad = ev(K.STEP_PROGRESS, "a")
    tuple_keyed: dict[Any, Any] = {(1, 2): "tuple key"}
    bad.data = tuple_keyed
    with pytest.raises(StoreError, match="JSON"):
        await store.append([ev(K.RUN_STARTED), bad])
    assert await appended(store) == []
    assert (await run_row(store)).status is RunStatus.PENDING


# -- leases -------------------------------------------------------------------------------

LEASE = 30.0


async def runs_created(store: Store, *specs: tuple[str, float], **fields: Any) -> None:
    for run_id, created_at in specs:
        await store.create_run(new_run(run_id, created_at=created_at, **fields), PLAN)


async def test_acquire_claims_unowned_unfinished_runs_oldest_first(store: Store) -> None:
    await runs_created(store, ("new", 3.0), ("old", 1.0), ("mid", 2.0))
    await store.append([ev(K.RUN_STARTED, run_id="mid")])
    before = time.time()
    claimed = await store.acquire_runs("c1", LEASE)
    after = time.time()
    assert [r.run_id for r in claimed] == ["old", "mid", "new"]
    assert {r.owner for r in claimed} == {"c1"}
    for run in claimed:
        assert run.lease_until is not None
        assert before + LEASE - 1.0 <= run.lease_until <= after + LEASE + 1.0
        assert run == await run_row(store, run.run_id)
    assert claimed[1].status is RunStatus.RUNNING


async def test_runs_created_at_the_same_time_are_acquired_in_insert_order(store: Store) -> None:
    await runs_created(store, ("b", 5.0), ("a", 5.0), ("c", 5.0))
    assert [r.run_id for r in await store.acquire_runs("c1", LEASE)] == ["b", "a", "c"]


async def test_acquire_stops_at_the_limit(store: Store) -> None:
    await runs_created(store, *[(f"r{i}", float(i)) for i in range(5)])
    assert [r.run_id for r in await store.acquire_runs("c1", LEASE, limit=2)] == ["r0", "r1"]
    assert [r.run_id for r in await store.acquire_runs("c2", LEASE, limit=2)] == ["r2", "r3"]
    assert await store.acquire_runs("c3", LEASE, limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        await store.acquire_runs("c3", LEASE, limit=-1)


@pytest.mark.parametrize("lease", [0.0, -1.0, math.nan])
async def test_a_lease_must_be_a_positive_number_of_seconds(store: Store, lease: float) -> None:
    with pytest.raises(ValueError, match="lease"):
        await store.acquire_runs("c1", lease)
    with pytest.raises(ValueError, match="lease"):
        await store.renew_leases("c1", lease)


async def test_a_run_under_a_live_lease_is_not_acquired(store: Store) -> None:
    await runs_created(store, ("r1", 1.0))
    assert [r.run_id for r in await store.acquire_runs("c1", LEASE)] == ["r1"]
    assert await store.acquire_runs("c2", LEASE) == []
    assert await store.acquire_runs("c1", LEASE) == []  # the owner too: it has it already
    assert (await run_row(store, "r1")).owner == "c1"


async def test_a_run_created_with_a_live_lease_is_not_acquired(store: Store) -> None:
    await runs_created(store, ("r1", 1.0), owner="c1", lease_until=time.time() + LEASE)
    assert await store.acquire_runs("c2", LEASE) == []


async def test_a_run_whose_lease_ended_is_taken_over(store: Store) -> None:
    await runs_created(store, ("r1", 1.0), owner="c1", lease_until=time.time() - 1.0)
    await runs_created(store, ("r2", 2.0), owner="c1", lease_until=None)
    claimed = await store.acquire_runs("c2", LEASE)
    assert [(r.run_id, r.owner) for r in claimed] == [("r1", "c2"), ("r2", "c2")]
    assert await store.renew_leases("c1", LEASE) == set()
    assert (await run_row(store, "r1")).owner == "c2"


async def test_a_lease_that_runs_out_lets_another_owner_take_the_run(store: Store) -> None:
    await runs_created(store, ("r1", 1.0))
    [run] = await store.acquire_runs("c1", 0.5)
    assert await store.acquire_runs("c2", LEASE) == []
    assert run.lease_until is not None
    await asyncio.sleep(run.lease_until - time.time() + 0.05)  # the lease running out
    claimed = await store.acquire_runs("c2", LEASE)
    assert [(r.run_id, r.owner) for r in claimed] == [("r1", "c2")]


async def test_finished_runs_keep_their_owner_and_are_never_acquired(store: Store) -> None:
    await runs_created(store, ("ok", 1.0), ("bad", 2.0), ("off", 3.0))
    await store.acquire_runs("c1", LEASE)
    await store.append(
        [
            ev(K.RUN_SUCCEEDED, run_id="ok"),
            ev(K.RUN_FAILED, run_id="bad", error="x"),
            ev(K.RUN_CANCELLED, run_id="off"),
        ]
    )
    await store.release_runs("c1")
    assert await store.acquire_runs("c2", LEASE) == []
    assert {r.owner for r in await store.list_runs()} == {"c1"}
    assert await store.renew_leases("c1", LEASE) == set()


async def test_renew_extends_the_unfinished_runs_the_owner_still_holds(store: Store) -> None:
    await runs_created(store, ("r1", 1.0), ("r2", 2.0), ("done", 3.0))
    await runs_created(store, ("theirs", 4.0), owner="c2", lease_until=time.time() + LEASE)
    first = {r.run_id: r.lease_until for r in await store.acquire_runs("c1", 1.0)}
    await store.append([ev(K.RUN_SUCCEEDED, run_id="done")])
    assert await store.renew_leases("c1", LEASE) == {"r1", "r2"}
    for run_id in ("r1", "r2"):
        lease_until = (await run_row(store, run_id)).lease_until
        assert lease_until is not None and lease_until > (first[run_id] or 0.0) + LEASE / 2
    assert (await run_row(store, "done")).lease_until == first["done"]
    assert await store.renew_leases("nobody", LEASE) == set()


async def test_release_ends_the_leases_at_once_keeping_the_owner(store: Store) -> None:
    await runs_created(store, ("r1", 1.0), ("r2", 2.0), ("r3", 3.0))
    await runs_created(store, ("theirs", 4.0), owner="c2", lease_until=time.time() + LEASE)
    await store.acquire_runs("c1", LEASE)
    await store.release_runs("c1", ["r2", "theirs", "ghost-run"])
    released = await run_row(store, "r2")
    assert (released.owner, released.lease_until) == ("c1", 0.0)
    assert [r.run_id for r in await store.acquire_runs("c3", LEASE)] == ["r2"]
    assert await store.renew_leases("c1", LEASE) == {"r1", "r3"}
    await store.release_runs("c1")
    assert [r.run_id for r in await store.acquire_runs("c3", LEASE)] == ["r1", "r3"]
    assert (await run_row(store, "theirs")).owner == "c2"


async def test_concurrent_acquirers_never_share_a_run(store: Store, other_store: Store) -> None:
    run_ids = [f"r{i:02d}" for i in range(40)]
    await runs_created(store, *[(run_id, float(i)) for i, run_id in enumerate(run_ids)])

    async def acquirer(s: Store, owner: str) -> list[str]:
        won: list[str] = []
        while claimed := await s.acquire_runs(owner, LEASE, limit=3):
            won.extend(r.run_id for r in claimed)
        return won

    async with asyncio.timeout(WAIT):
        results = await asyncio.gather(
            *[acquirer(s, f"c{i}") for i in range(4) for s in (store, other_store)]
        )
    won = [run_id for result in results for run_id in result]
    assert sorted(won) == run_ids
    owners = {r.run_id: r.owner for r in await store.list_runs(limit=100)}
    for i, result in enumerate(results):
        assert {owners[run_id] for run_id in result} <= {f"c{i // 2}"}


# -- retention ----------------------------------------------------------------------------


async def finished_run(store: Store, run_id: str, kind: EventKind, ts: float) -> None:
    await started_run(store, run_id)
    await store.append([ev(kind, run_id=run_id, ts=ts, error="why")])


async def test_finished_runs_are_those_that_finished_before_the_time_longest_ago_first(
    store: Store,
) -> None:
    await finished_run(store, "r-succeeded", K.RUN_SUCCEEDED, 300.0)
    await finished_run(store, "r-failed", K.RUN_FAILED, 200.0)
    await finished_run(store, "r-cancelled", K.RUN_CANCELLED, 400.0)
    await started_run(store, "r-running")
    await store.create_run(new_run("r-pending"), PLAN)
    found = await store.finished_runs(350.0)
    assert [(r.run_id, r.status, r.finished_at) for r in found] == [
        ("r-failed", RunStatus.FAILED, 200.0),
        ("r-succeeded", RunStatus.SUCCEEDED, 300.0),
    ]
    assert [r.run_id for r in await store.finished_runs(1e12, limit=2)] == [
        "r-failed",
        "r-succeeded",
    ]
    assert await store.finished_runs(200.0) == []


async def test_finished_runs_page_by_when_they_finished_then_by_id(store: Store) -> None:
    for run_id, ts in [("r-c", 200.0), ("r-a", 200.0), ("r-b", 100.0), ("r-d", 300.0)]:
        await finished_run(store, run_id, K.RUN_SUCCEEDED, ts)
    pages: list[list[str]] = []
    after: tuple[float, str] | None = None
    while page := await store.finished_runs(1000.0, limit=2, after=after):
        pages.append([r.run_id for r in page])
        after = (page[-1].finished_at or 0.0, page[-1].run_id)
    assert pages == [["r-b", "r-a"], ["r-c", "r-d"]]


async def test_deleting_runs_deletes_only_finished_ones_with_their_steps_and_events(
    store: Store, other_store: Store
) -> None:
    await finished_run(store, "r-old", K.RUN_SUCCEEDED, 300.0)
    await started_run(store, "r-running")
    await store.create_run(new_run("r-pending"), PLAN)
    deleted = await store.delete_runs(["r-running", "r-old", "r-pending", "r-unknown"])
    assert deleted == ["r-old"]
    assert await other_store.get_run("r-old") is None
    assert await other_store.get_steps("r-old") == []
    assert await other_store.get_events("r-old") == []
    for kept in ("r-running", "r-pending"):
        assert (await run_row(other_store, kept)).run_id == kept
        assert len(await other_store.get_steps(kept)) == 2
        assert (await other_store.get_events(kept))[0].kind is K.RUN_SUBMITTED
    assert await store.delete_runs([]) == []


# -- cancel requests ------------------------------------------------------------------------


async def test_a_cancel_request_is_kept_for_a_run_that_does_not_exist_yet(
    store: Store, other_store: Store
) -> None:
    await store.request_cancel("r-queued", "changed my mind")
    await store.request_cancel("r-queued", "a second request")  # the first reason stays
    await store.create_run(new_run("r-queued"), PLAN)
    await store.create_run(new_run("r-other"), PLAN)
    await store.request_cancel("r-other")
    assert await other_store.cancel_requests(["r-queued", "r-other", "r-none"]) == {
        "r-queued": "changed my mind",
        "r-other": None,
    }
    assert await other_store.cancel_requests([]) == {}


async def test_a_cancel_request_is_deleted_with_its_run(store: Store) -> None:
    await finished_run(store, "r-old", K.RUN_CANCELLED, 300.0)
    await store.create_run(new_run("r-pending"), PLAN)
    await store.request_cancel("r-old", "stop")
    await store.request_cancel("r-pending", "stop")
    assert await store.delete_runs(["r-old", "r-pending"]) == ["r-old"]
    assert await store.cancel_requests(["r-old", "r-pending"]) == {"r-pending": "stop"}


async def test_a_plan_is_deleted_with_the_last_run_of_it_and_stored_again_by_the_next(
    store: Store,
) -> None:
    other = build("q", [StepSpec("x", "add")])
    await finished_run(store, "r-1", K.RUN_SUCCEEDED, 300.0)
    await finished_run(store, "r-2", K.RUN_FAILED, 300.0)
    await store.create_run(new_run("r-q", other), other)
    await store.append([ev(K.RUN_CANCELLED, run_id="r-q", ts=300.0)])
    assert await store.delete_runs(["r-1"]) == ["r-1"]
    assert await store.get_plan(PLAN.digest) == PLAN  # r-2 still uses it
    assert await store.delete_runs(["r-2", "r-q"]) == ["r-2", "r-q"]
    assert await store.get_plan(PLAN.digest) is None
    assert await store.get_plan(other.digest) is None
    await store.create_run(new_run("r-3"), PLAN)
    assert await store.get_plan(PLAN.digest) == PLAN
    assert [s.key for s in await store.get_steps("r-3")] == ["a", "b"]


# -- fencing ------------------------------------------------------------------------------


def fence(owner: str, **epochs: int) -> Fence:
    return Fence(owner, epochs)


async def test_a_created_run_is_at_epoch_one_and_each_claim_is_the_next_epoch(
    store: Store,
) -> None:
    await runs_created(store, ("r1", 1.0), owner="c1", lease_until=time.time() - 1.0)
    assert (await run_row(store, "r1")).epoch == 1
    [claimed] = await store.acquire_runs("c2", 0.2)
    assert claimed.epoch == 2 == (await run_row(store, "r1")).epoch
    await asyncio.sleep(0.3)  # that lease runs out
    [again] = await store.acquire_runs("c2", LEASE)
    assert (again.owner, again.epoch) == ("c2", 3)


async def test_a_fenced_append_by_the_owner_at_its_epoch_commits(store: Store) -> None:
    await runs_created(store, ("r1", 1.0), owner="c1", lease_until=time.time() + LEASE)
    await store.append([ev(K.RUN_STARTED, run_id="r1")], fence=fence("c1", r1=1))
    assert (await run_row(store, "r1")).status is RunStatus.RUNNING


async def test_a_fenced_append_after_a_takeover_commits_nothing_and_names_the_runs_lost(
    store: Store, other_store: Store
) -> None:
    await runs_created(store, ("lost", 1.0), owner="c1", lease_until=time.time() - 1.0)
    await runs_created(store, ("kept", 2.0), owner="c1", lease_until=time.time() + LEASE)
    [claimed] = await other_store.acquire_runs("c2", LEASE)  # c1's lease on "lost" ended
    assert claimed.run_id == "lost"
    batch = [
        ev(K.RUN_STARTED, run_id="kept"),
        ev(K.RUN_STARTED, run_id="lost"),
        ev(K.STEP_DISPATCHED, "a", 1, run_id="lost"),
    ]
    with pytest.raises(LeaseLostError, match="lost") as raised:
        await store.append(batch, fence=fence("c1", kept=1, lost=1))
    assert raised.value.run_ids == {"lost"}
    assert isinstance(raised.value, StoreError)
    for run_id in ("kept", "lost"):  # the whole batch was refused
        assert await appended(store, run_id) == []
        assert (await run_row(store, run_id)).status is RunStatus.PENDING
    await store.append(batch[:1], fence=fence("c1", kept=1))  # the rest commits alone
    await other_store.append(batch[1:], fence=fence("c2", lost=2))
    assert (await step_row(store, "a", "lost")).status is StepStatus.QUEUED


async def test_a_fence_holding_an_older_epoch_or_not_the_run_is_refused(store: Store) -> None:
    await runs_created(store, ("r1", 1.0), owner="c1", lease_until=time.time() - 1.0)
    await store.acquire_runs("c1", LEASE)  # the same owner, a new epoch
    with pytest.raises(LeaseLostError):
        await store.append([ev(K.RUN_STARTED, run_id="r1")], fence=fence("c1", r1=1))
    with pytest.raises(LeaseLostError):
        await store.append([ev(K.RUN_STARTED, run_id="r1")], fence=fence("c1"))
    await store.append([ev(K.RUN_STARTED, run_id="r1")], fence=fence("c1", r1=2))
    assert (await run_row(store, "r1")).status is RunStatus.RUNNING


async def test_an_unfenced_append_is_not_checked(store: Store) -> None:
    await runs_created(store, ("r1", 1.0), owner="c1", lease_until=time.time() + LEASE)
    await store.append([ev(K.RUN_STARTED, run_id="r1")])
    assert (await run_row(store, "r1")).status is RunStatus.RUNNING


async def test_renewing_held_runs_renews_exactly_those_still_owned_at_their_epoch(
    store: Store,
) -> None:
    await runs_created(store, ("r1", 1.0), ("r2", 2.0), ("r3", 3.0), ("done", 4.0))
    await runs_created(store, ("fresh", 5.0), owner="c1", lease_until=time.time() + LEASE)
    await store.acquire_runs("c1", 1.0)  # every run but "fresh", at epoch 2
    await store.append([ev(K.RUN_SUCCEEDED, run_id="done")])
    held = {"r1": 2, "r2": 1, "done": 2, "ghost": 2}  # r2 at a stale epoch; r3 not held
    assert await store.renew_leases("c1", LEASE, held) == {"r1"}
    leases = {r.run_id: r.lease_until or 0.0 for r in await store.list_runs()}
    assert leases["r1"] > time.time() + LEASE / 2
    assert leases["r2"] < time.time() + 2.0 and leases["r3"] < time.time() + 2.0
    assert await store.renew_leases("c2", LEASE, {"r1": 2}) == set()
    assert await store.renew_leases("c1", LEASE, {}) == set()


async def test_fail_run_ends_an_unfinished_run_failed_with_its_error_and_logs_it(
    store: Store,
) -> None:
    await runs_created(store, ("r1", 1.0), owner="c1", lease_until=time.time() + LEASE)
    await store.append([ev(K.RUN_STARTED, run_id="r1"), ev(K.STEP_DISPATCHED, "a", 1, run_id="r1")])
    event = await store.fail_run("r1", "refused", ts=300.0, fence=fence("c1", r1=1))
    assert event is not None and event.seq > 0
    assert (event.kind, event.data) == (K.RUN_FAILED, {"error": "refused"})
    run = await run_row(store, "r1")
    assert (run.status, run.error, run.finished_at) == (RunStatus.FAILED, "refused", 300.0)
    assert (await appended(store, "r1"))[-1] == event
    assert (await step_row(store, "a", "r1")).status is StepStatus.QUEUED  # nothing else
    assert await store.fail_run("r1", "again", ts=400.0) is None  # finished already
    assert (await run_row(store, "r1")).error == "refused"


async def test_fail_run_is_fenced_and_refuses_an_unknown_run(store: Store) -> None:
    await runs_created(store, ("r1", 1.0), owner="c2", lease_until=time.time() + LEASE)
    with pytest.raises(LeaseLostError):
        await store.fail_run("r1", "refused", ts=300.0, fence=fence("c1", r1=1))
    assert (await run_row(store, "r1")).status is RunStatus.PENDING
    with pytest.raises(StoreError, match="ghost"):
        await store.fail_run("ghost", "refused", ts=300.0)


async def test_owners_tells_who_owns_each_known_run_and_whether_the_lease_is_live(
    store: Store,
) -> None:
    now = time.time()
    await runs_created(store, ("live", 1.0), owner="c1", lease_until=now + LEASE)
    await runs_created(store, ("lapsed", 2.0), owner="c1", lease_until=now - 1.0)
    await runs_created(store, ("free", 3.0))
    await store.append([ev(K.RUN_CANCELLED, run_id="live")])
    found = await store.owners(["live", "lapsed", "free", "ghost", "live"])
    assert found == {
        "live": Ownership("live", RunStatus.CANCELLED, "c1", 1, True),
        "lapsed": Ownership("lapsed", RunStatus.PENDING, "c1", 1, False),
        "free": Ownership("free", RunStatus.PENDING, None, 1, False),
    }
    assert await store.owners([]) == {}


async def test_failed_attempts_are_counted_but_lost_ones_are_not(store: Store) -> None:
    await started_run(store)
    lost = {"error": BOOM.to_dict(), "lost": True}
    await store.append(
        [
            ev(K.STEP_DISPATCHED, "a", 1),
            ev(K.STEP_RETRYING, "a", 1, error=BOOM.to_dict()),
            ev(K.STEP_DISPATCHED, "a", 2),
            ev(K.STEP_RETRYING, "a", 2, **lost),
            ev(K.STEP_DISPATCHED, "a", 3),
            ev(K.STEP_RETRYING, "a", 1, error=BOOM.to_dict()),  # stale: changes nothing
        ]
    )
    assert (await step_row(store, "a")).failures == 1
    await store.append([ev(K.STEP_FAILED, "a", 3, error=BOOM.to_dict())])
    a = await step_row(store, "a")
    assert (a.status, a.attempts, a.failures) == (StepStatus.FAILED, 3, 2)
    assert (await step_row(store, "b")).failures == 0


async def test_text_with_nul_characters_is_stored_and_read_back_in_one_piece(
    store: Store,
) -> None:
    await started_run(store)
    error = ErrorInfo("ValueError", "bad \x00 byte", "Traceback\x00", retryable=False)
    await store.append(
        [
            ev(K.STEP_DISPATCHED, "a", 1),
            ev(K.STEP_STARTED, "a", 1, worker="w\x00rker"),
            ev(K.STEP_FAILED, "a", 1, error=error.to_dict(), message="\x00"),
            ev(K.RUN_FAILED, error="failed steps: a: ValueError: bad \x00 byte"),
        ]
    )
    a = await step_row(store, "a")
    assert a.error == error and a.worker is not None and a.worker.startswith("w")
    run = await run_row(store)
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.startswith("failed steps: a: ValueError: bad")
    (failed,) = [e for e in await appended(store) if e.kind is K.STEP_FAILED]
    assert failed.data["message"] == "\x00"


async def test_a_run_whose_id_is_too_long_for_a_notification_still_takes_events(
    store: Store,
) -> None:
    run_id = "r" * 8000  # ids are at most 255 characters now; older ones may be longer
    await store.create_run(new_run(run_id), PLAN)
    await store.append([ev(K.RUN_STARTED, run_id=run_id), ev(K.RUN_SUCCEEDED, run_id=run_id)])
    assert (await run_row(store, run_id)).status is RunStatus.SUCCEEDED
    assert [e.kind for e in await collect(store, run_id)][-1] is K.RUN_SUCCEEDED


# -- following ----------------------------------------------------------------------------


async def collect(store: Store, run_id: str = "run-0001", after: int = 0) -> list[Event]:
    async with asyncio.timeout(WAIT), aclosing(store.follow(run_id, after=after)) as events:
        return [event async for event in events]


async def test_a_follower_sees_every_event_as_it_comes_and_stops_at_the_end(
    store: Store, other_store: Store
) -> None:
    submitted = await store.create_run(new_run(), PLAN)
    seen: asyncio.Queue[Event] = asyncio.Queue()

    async def follow() -> None:
        async with aclosing(store.follow("run-0001", after=submitted.seq)) as events:
            async for event in events:
                await seen.put(event)

    batches = [
        [ev(K.RUN_STARTED)],
        [ev(K.STEP_DISPATCHED, "a", 1), ev(K.STEP_STARTED, "a", 1)],
        [ev(K.STEP_SUCCEEDED, "a", 1, output=b"\x01")],
        [ev(K.STEP_DISPATCHED, "b", 1), ev(K.RUN_SUCCEEDED), ev(K.STEP_PROGRESS, "b", 1)],
    ]
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tasks:
        follower = tasks.create_task(follow())
        for batch in batches:
            await other_store.append(batch)  # another connection: no in-process wake-up
            wanted = [(e.seq, e.kind) for e in batch if e.kind is not K.STEP_PROGRESS]
            assert [(e.seq, e.kind) for e in [await seen.get() for _ in wanted]] == wanted
        await follower
    assert seen.empty()


async def test_a_follower_of_a_finished_run_gets_the_rest_and_stops(store: Store) -> None:
    await started_run(store)
    batch = [ev(K.STEP_DISPATCHED, "a", 1), ev(K.RUN_FAILED, error="x"), ev(K.STEP_PROGRESS)]
    await store.append(batch)
    logged = await store.get_events("run-0001")
    # run_submitted, run_started, step_dispatched, run_failed
    assert await collect(store) == logged[:4]
    assert await collect(store, after=batch[0].seq) == [batch[1]]


async def test_a_follower_from_after_the_end_gets_only_later_events(store: Store) -> None:
    await started_run(store)
    end, late = ev(K.RUN_CANCELLED, error="x"), ev(K.STEP_PROGRESS, "a")
    await store.append([end, late])
    assert await collect(store, after=end.seq) == [late]
    assert await collect(store, after=late.seq) == []


async def test_a_follower_starts_after_the_seq_given(store: Store) -> None:
    await started_run(store)
    first = await store.get_events("run-0001")
    follower = asyncio.create_task(collect(store, after=first[-1].seq))
    later = [ev(K.STEP_DISPATCHED, "a", 1), ev(K.RUN_SUCCEEDED)]
    await store.append(later)
    assert await follower == later


async def test_following_an_unknown_run_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="ghost-run"):
        await collect(store, "ghost-run")


async def test_a_follower_ends_with_a_store_error_when_its_store_closes(
    unopened_store: Store,
) -> None:
    s = unopened_store
    await s.open()
    submitted = await s.create_run(new_run(), PLAN)
    await s.append([ev(K.RUN_STARTED)])
    seen: asyncio.Queue[Event] = asyncio.Queue()

    async def follow() -> None:
        async with aclosing(s.follow("run-0001", after=submitted.seq)) as events:
            async for event in events:
                await seen.put(event)

    follower = asyncio.create_task(follow())
    async with asyncio.timeout(WAIT):
        assert (await seen.get()).kind is K.RUN_STARTED
        await s.close()
        with pytest.raises(StoreError, match="not open"):
            await follower


# -- lifecycle ----------------------------------------------------------------------------


@pytest.fixture
def unopened_store(adapter: Callable[[], Store]) -> Store:
    return adapter()


async def test_a_store_that_is_not_open_raises_store_error(unopened_store: Store) -> None:
    s = unopened_store
    with pytest.raises(StoreError, match="not open"):
        await s.get_run("run-0001")
    await s.open()
    await s.create_run(new_run(), PLAN)
    await s.close()
    with pytest.raises(StoreError, match="not open"):
        await s.append([ev(K.RUN_STARTED)])


async def test_close_and_open_again_keeps_the_data(store: Store) -> None:
    await started_run(store)
    await store.close()
    await store.open()
    assert (await run_row(store)).status is RunStatus.RUNNING


# -- every store folds events as the pure fold does ----------------------------------------

_event_specs = st.tuples(
    st.sampled_from(list(EventKind)),
    st.sampled_from(["a", "b", "unknown", None]),
    st.integers(min_value=0, max_value=3),
    st.sampled_from(
        [
            {},
            {"error": BOOM.to_dict(), "worker": "w"},
            {"error": "bare", "worker": 7},
            {"error": BOOM.to_dict(), "lost": True},
        ]
    ),
    st.booleans(),
)
_batches = st.lists(st.lists(_event_specs, max_size=6), max_size=6)


def _events(
    run_id: str, batches: list[list[tuple[EventKind, str | None, int, dict[str, Any], bool]]]
) -> list[list[Event]]:
    ts = 1000.0
    made: list[list[Event]] = []
    for batch in batches:
        made.append([])
        for kind, step, attempt, data, with_output in batch:
            ts += 1.0
            output = f"{ts}".encode() if with_output else None
            made[-1].append(Event(kind, run_id, ts, step, attempt, dict(data), output))
    return made


def _folded(run: RunRecord, batches: list[list[Event]]) -> tuple[RunRecord, list[StepRecord]]:
    steps = {s.key: StepRecord(run.run_id, s.key, s.name, s.queue) for s in PLAN.steps}
    for batch in batches:
        for event in batch:
            fold.apply(run, steps, event)
    return run, list(steps.values())


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # a new run per example
)
@given(batches=_batches)
async def test_the_store_and_the_remote_view_fold_any_event_sequence_as_the_pure_fold(
    store: Store, batches: list[list[tuple[EventKind, str | None, int, dict[str, Any], bool]]]
) -> None:
    """The remote view gets each batch as a coordinator sends it: once appended (seqs
    assigned, outputs kept), through the events' wire form."""
    run_id = uuid.uuid4().hex

    async def no_cancel(run_id: str) -> None:
        raise AssertionError("not cancelled here")

    remote = RemoteRun(run_id, PLAN, 3, objects=MemoryObjectStore(), cancel=no_cancel)
    submitted = await store.create_run(new_run(run_id, priority=3), PLAN)
    remote.receive([from_record(run_id, to_record(submitted))])  # as the coordinator sends
    logged = [submitted]
    for batch in _events(run_id, batches):
        await store.append(batch)
        remote.receive([from_record(run_id, to_record(e)) for e in batch])
        logged += [replace(e, output=None) for e in batch]

    run, steps = _folded(new_run(run_id, priority=3), _events(run_id, batches))
    assert (await store.get_run(run_id), await store.get_steps(run_id)) == (run, steps)
    assert replace(remote._record, created_at=run.created_at) == run  # created client-side
    assert await remote.steps() == steps
    assert await store.get_events(run_id) == logged


# -- SQLite specifics ---------------------------------------------------------------------


def schema(path: Path) -> list[tuple[str, str, str | None]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
            "ORDER BY type, name"
        ).fetchall()
    finally:
        conn.close()


def pragma(path: Path, name: str) -> Any:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


async def test_a_reopened_sqlite_file_keeps_runs_steps_events_and_plans(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    async with SqliteStore(path) as first:
        await started_run(first)
        batch = [ev(K.STEP_DISPATCHED, "a", 1), ev(K.STEP_SUCCEEDED, "a", 1, output=b"\x01")]
        await first.append(batch)
    async with SqliteStore(path) as again:
        assert (await run_row(again)).status is RunStatus.RUNNING
        assert (await step_row(again, "a")).output == b"\x01"
        assert await again.get_plan(PLAN.digest) == PLAN
        assert [e.seq for e in await again.get_events("run-0001")][-2:] == [e.seq for e in batch]
        later = ev(K.RUN_SUCCEEDED)
        await again.append([later])
        assert later.seq > batch[-1].seq


async def test_two_sqlite_stores_on_one_file_see_each_others_commits(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    async with SqliteStore(path) as writer, SqliteStore(path) as reader:
        await started_run(writer)
        assert (await run_row(reader)).status is RunStatus.RUNNING


async def test_a_sqlite_plan_is_stored_once_per_digest(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    async with SqliteStore(path) as s:
        for i in range(3):
            await s.create_run(new_run(f"r{i}"), PLAN)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*) FROM plans").fetchone()[0] == 1
    finally:
        conn.close()


def locked(path: Path) -> sqlite3.Connection:
    """A connection holding ``path``'s exclusive lock, as another process's would."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


async def test_opening_a_sqlite_file_another_process_has_locked_waits_for_the_lock(
    tmp_path: Path,
) -> None:
    # Two processes starting on one new file at once: the second waits for the first's
    # migration instead of failing with "database is locked".
    path = tmp_path / "runs.db"
    holder = locked(path)
    loop = asyncio.get_running_loop()
    loop.call_later(0.6, holder.execute, "COMMIT")
    started = time.monotonic()
    try:
        async with SqliteStore(path) as s:
            assert time.monotonic() - started >= 0.5
            await s.create_run(new_run("r1"), PLAN)
    finally:
        holder.close()


async def test_opening_a_sqlite_file_locked_for_longer_than_open_wait_fails(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    holder = locked(path)
    store = SqliteStore(path, open_wait=0.5)
    try:
        with pytest.raises(StoreUnavailableError, match="database is locked"):
            await store.open()
    finally:
        holder.close()
    await store.open()  # the lock is gone: it opens now
    await store.close()


async def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "runs.db"):
        assert pragma(tmp_path / "runs.db", "journal_mode") == "wal"


async def test_sqlite_parent_folders_are_created(tmp_path: Path) -> None:
    path = tmp_path / ".aexec" / "deep" / "runs.db"
    async with SqliteStore(path):
        pass
    assert path.is_file()


def test_from_url_takes_relative_absolute_and_in_memory_paths() -> None:
    assert from_url("sqlite:///.aexec/runs.db").path == ".aexec/runs.db"
    assert from_url("sqlite:////var/lib/aexec/runs.db").path == "/var/lib/aexec/runs.db"
    assert from_url("sqlite:///:memory:").path == ":memory:"
    assert SqliteStore.from_url("sqlite:///my%20runs.db").path == "my runs.db"


@pytest.mark.parametrize(
    "url", ["postgresql://localhost/x", "sqlite://host/x.db", "sqlite:///", "sqlite:///x.db?a=1"]
)
def test_from_url_rejects_other_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        from_url(url)


async def test_an_in_memory_sqlite_store_works(tmp_path: Path) -> None:
    async with from_url("sqlite:///:memory:") as s:
        await started_run(s)
        assert (await run_row(s)).status is RunStatus.RUNNING


async def test_a_writer_locked_out_by_another_process_gets_a_store_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    async with SqliteStore(path, timeout=0.05) as s:
        await s.create_run(new_run(), PLAN)
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError, match="locked"):
                await s.append([ev(K.RUN_STARTED)])
            assert (await run_row(s)).status is RunStatus.PENDING  # readers are not blocked
            async with SqliteStore(path, timeout=0.05) as reader:
                assert (await run_row(reader)).status is RunStatus.PENDING
            other.execute("ROLLBACK")
        finally:
            other.close()
        await s.append([ev(K.RUN_STARTED)])
        assert (await run_row(s)).status is RunStatus.RUNNING


async def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"this is not a database, just some text " * 100)
    with pytest.raises(StoreError, match="not a database") as info:
        await SqliteStore(path).open()
    assert isinstance(info.value.__cause__, sqlite3.Error)
    assert "\n" not in str(info.value)


async def test_migrations_set_user_version_to_the_number_of_migration_files(
    tmp_path: Path,
) -> None:
    files = sorted(
        (Path(__file__).parents[2] / "aexec/store/migrations/sqlite").glob("[0-9]*_*.sql")
    )
    assert [m.name for m in migrations()] == [f.name for f in files]
    async with SqliteStore(tmp_path / "runs.db"):
        pass
    assert pragma(tmp_path / "runs.db", "user_version") == len(files) >= 1


async def test_reopening_a_migrated_database_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    async with SqliteStore(path):
        pass
    first = schema(path)
    async with SqliteStore(path):
        pass
    assert schema(path) == first
    assert pragma(path, "user_version") == len(migrations())


async def test_migrating_gives_the_schema_of_the_migration_files_run_as_scripts(
    tmp_path: Path,
) -> None:
    async with SqliteStore(tmp_path / "migrated.db"):
        pass
    conn = sqlite3.connect(tmp_path / "scripted.db")
    try:
        for migration in migrations():
            conn.executescript(migration.sql)
    finally:
        conn.close()
    assert schema(tmp_path / "migrated.db") == schema(tmp_path / "scripted.db")
    tables = {name for kind, name, _ in schema(tmp_path / "migrated.db") if kind == "table"}
    assert tables == {
        "plans",
        "runs",
        "steps",
        "events",
        "cancel_requests",
        "webhooks",
        "rate_buckets",
        "limit_slots",
        "limit_waits",
    }


def structure(path: Path) -> dict[str, Any]:
    """Tables (columns, keys) and indexes, in a form independent of how they were built:
    SQLite keeps a table's CREATE text as written, and ALTER TABLE edits that text."""
    conn = sqlite3.connect(path)
    try:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        indexes = conn.execute(
            "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name"
        ).fetchall()
        return {
            "tables": {
                table: (
                    conn.execute(f"PRAGMA table_xinfo({table})").fetchall(),
                    conn.execute(f"PRAGMA foreign_key_list({table})").fetchall(),
                )
                for table in tables
            },
            "indexes": [(n, t, sql and " ".join(sql.split())) for n, t, sql in indexes],
        }
    finally:
        conn.close()


async def test_migrating_an_empty_file_gives_the_schema_file(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "migrated.db"):
        pass
    schema_sql = Path(__file__).parents[2] / "aexec/store/migrations/sqlite/schema.sql"
    conn = sqlite3.connect(tmp_path / "expected.db")
    try:
        conn.executescript(schema_sql.read_text(encoding="utf-8"))
    finally:
        conn.close()
    migrated, expected = structure(tmp_path / "migrated.db"), structure(tmp_path / "expected.db")
    assert migrated["tables"] == expected["tables"]
    assert migrated["indexes"] == expected["indexes"]


async def test_a_new_database_waits_for_the_write_lock_to_migrate(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match="locked"):
            await SqliteStore(path, timeout=0.05).open()
        other.execute("ROLLBACK")
    finally:
        other.close()
    async with SqliteStore(path):
        pass
    assert pragma(path, "user_version") == len(migrations())


async def test_a_database_from_a_newer_aexec_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(migrations()) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        await SqliteStore(path).open()


# -- maps ---------------------------------------------------------------------------------


async def test_a_map_expansion_adds_its_steps_once_in_order_and_they_move_as_any(
    store: Store,
) -> None:
    await started_run(store)
    last = len(PLAN.steps)
    expanded = ev(K.STEP_EXPANDED, "b", count=3, position=last, name="noop", queue="q")
    await store.append(
        [expanded, ev(K.STEP_DISPATCHED, "b[0]", 1), ev(K.STEP_DISPATCHED, "b[2]", 1)]
    )
    await store.append([replace(expanded, seq=0)])  # recorded again: nothing more
    steps = await store.get_steps("run-0001")
    assert [s.key for s in steps][-3:] == ["b[0]", "b[1]", "b[2]"]
    assert len(steps) == last + 3
    added = {s.key: s for s in steps[-3:]}
    assert added["b[1]"] == StepRecord("run-0001", "b[1]", "noop", "q")
    assert added["b[0]"].status is StepStatus.QUEUED and added["b[0]"].attempts == 1
    await store.append([ev(K.STEP_SUCCEEDED, "b[0]", 1, output=b"\x01")])
    assert (await step_row(store, "b[0]")).output == b"\x01"
    kinds = [e.kind for e in await appended(store)]
    assert kinds.count(K.STEP_EXPANDED) == 2  # logged each time, applied once


async def test_an_empty_expansion_adds_no_step(store: Store) -> None:
    await started_run(store)
    await store.append([ev(K.STEP_EXPANDED, "b", count=0, position=len(PLAN.steps))])
    assert len(await store.get_steps("run-0001")) == len(PLAN.steps)


# -- webhook outbox --------------------------------------------------------------------------


def delivery(run_id: str = "run-0001", url: str = "http://hooks/a", **fields: Any) -> Any:
    from aexec.store import WebhookDelivery

    fields.setdefault("next_at", 300.0)
    return WebhookDelivery(
        id=f"{run_id}|{url}",
        run_id=run_id,
        url=url,
        event="run_failed",
        body=b'{"run_id": "%s"}' % run_id.encode(),
        created_at=300.0,
        **fields,
    )


async def test_deliveries_are_written_with_the_events_that_end_the_run_and_only_once(
    store: Store, other_store: Store
) -> None:
    from aexec.store import DeliveryStatus

    await started_run(store)
    ending = ev(K.RUN_FAILED, ts=300.0, error="boom")
    await store.append([ending], outbox=[delivery(), delivery(url="http://hooks/b")])
    await store.append([], outbox=[delivery(next_at=999.0)])  # the same decision, again
    found = await other_store.get_deliveries("run-0001")
    assert [(d.url, d.status, d.attempts, d.next_at) for d in found] == [
        ("http://hooks/a", DeliveryStatus.PENDING, 0, 300.0),
        ("http://hooks/b", DeliveryStatus.PENDING, 0, 300.0),
    ]
    assert found[0].body == b'{"run_id": "run-0001"}'
    assert await other_store.next_delivery_at() == 300.0
    await store.claim_deliveries("d-1", 50.0, now=310.0, limit=1)
    assert await other_store.next_delivery_at() == 300.0  # the other one is free
    await store.claim_deliveries("d-1", 50.0, now=310.0, limit=1)
    assert await other_store.next_delivery_at() == 360.0  # both leased until 360


async def test_a_batch_refused_by_its_fence_adds_no_delivery(store: Store) -> None:
    from aexec.errors import LeaseLostError
    from aexec.store import Fence

    await store.create_run(new_run(owner="c-1", lease_until=1e12), PLAN)
    with pytest.raises(LeaseLostError):
        await store.append(
            [ev(K.RUN_FAILED, ts=300.0)],
            fence=Fence("c-2", {"run-0001": 1}),
            outbox=[delivery()],
        )
    assert await store.get_deliveries("run-0001") == []
    assert await store.next_delivery_at() is None


async def test_fail_run_writes_its_deliveries_unless_the_run_had_ended(store: Store) -> None:
    await started_run(store)
    assert await store.fail_run("run-0001", "refused", ts=300.0, outbox=[delivery()])
    assert len(await store.get_deliveries("run-0001")) == 1
    await store.append([], outbox=[])
    assert await store.fail_run("run-0001", "again", ts=301.0, outbox=[delivery(url="x")]) is None
    assert len(await store.get_deliveries("run-0001")) == 1


async def test_due_deliveries_are_claimed_by_one_deliverer_until_the_lease_ends(
    store: Store, other_store: Store
) -> None:
    await started_run(store)
    await store.append(
        [ev(K.RUN_FAILED, ts=300.0)],
        outbox=[delivery(url="late", next_at=500.0), delivery(url="soon", next_at=300.0)],
    )
    assert await store.claim_deliveries("d-1", 10.0, now=299.0) == []  # none due yet
    [claimed] = await store.claim_deliveries("d-1", 10.0, now=400.0)
    assert claimed.url == "soon"
    assert await other_store.claim_deliveries("d-2", 10.0, now=405.0) == []  # leased
    [taken] = await other_store.claim_deliveries("d-2", 10.0, now=410.0)  # lease ended
    assert taken.url == "soon"
    both = await store.claim_deliveries("d-3", 10.0, now=600.0, limit=5)
    assert [d.url for d in both] == ["soon", "late"]


async def test_settling_records_each_attempt_and_only_for_the_deliverer_holding_it(
    store: Store, other_store: Store
) -> None:
    from aexec.store import Attempted, DeliveryStatus

    await started_run(store)
    await store.append([ev(K.RUN_FAILED, ts=300.0)], outbox=[delivery()])
    await store.claim_deliveries("d-1", 10.0, now=300.0)
    await other_store.claim_deliveries("d-2", 10.0, now=311.0)  # d-1's lease ended
    retry = Attempted(False, 312.0, 320.0, status=503, error="HTTP 503")
    assert not await store.settle_delivery("run-0001|http://hooks/a", "d-1", retry)
    assert await other_store.settle_delivery("run-0001|http://hooks/a", "d-2", retry)
    [found] = await store.get_deliveries("run-0001")
    assert (found.status, found.attempts, found.next_at, found.last_status) == (
        DeliveryStatus.PENDING,
        1,
        320.0,
        503,
    )
    assert found.last_error == "HTTP 503" and found.finished_at is None
    assert await store.claim_deliveries("d-1", 10.0, now=319.0) == []
    [again] = await store.claim_deliveries("d-1", 10.0, now=320.0)
    assert again.attempts == 1
    assert await store.settle_delivery(again.id, "d-1", Attempted(True, 321.0, None, 204))
    [done] = await other_store.get_deliveries("run-0001")
    assert (done.status, done.attempts, done.finished_at, done.last_status) == (
        DeliveryStatus.DELIVERED,
        2,
        321.0,
        204,
    )
    assert await store.claim_deliveries("d-1", 10.0, now=1000.0) == []
    assert not await store.settle_delivery(done.id, "d-1", Attempted(True, 322.0, None))
    assert await store.next_delivery_at() is None


async def test_a_delivery_given_up_is_failed_and_never_claimed_again(store: Store) -> None:
    from aexec.store import Attempted, DeliveryStatus

    await started_run(store)
    await store.append([ev(K.RUN_FAILED, ts=300.0)], outbox=[delivery()])
    [claimed] = await store.claim_deliveries("d-1", 10.0, now=300.0)
    gave_up = Attempted(False, 301.0, None, error="connection refused")
    assert await store.settle_delivery(claimed.id, "d-1", gave_up)
    [found] = await store.get_deliveries("run-0001")
    assert (found.status, found.finished_at, found.last_status, found.last_error) == (
        DeliveryStatus.FAILED,
        301.0,
        None,
        "connection refused",
    )
    assert await store.claim_deliveries("d-1", 10.0, now=1000.0) == []


async def test_deleting_a_run_deletes_its_deliveries(store: Store) -> None:
    await started_run(store)
    await store.append([ev(K.RUN_FAILED, ts=300.0)], outbox=[delivery()])
    assert await store.delete_runs(["run-0001"]) == ["run-0001"]
    assert await store.get_deliveries("run-0001") == []


# -- rate limit buckets ----------------------------------------------------------------------


async def test_a_new_token_bucket_is_full_and_gives_no_more_than_it_holds(store: Store) -> None:
    rate = Rate(5, 3600.0)  # refills one token every 12 minutes: none during the test
    assert await store.take_tokens("rate:a", rate, 3) == (3, 0.0)
    granted, retry_in = await store.take_tokens("rate:a", rate, 10)
    assert granted == 2
    assert 700.0 < retry_in <= 720.0  # a whole token is 720 s away
    assert (await store.take_tokens("rate:a", rate, 1))[0] == 0
    assert await store.take_tokens("rate:b", rate, 1) == (1, 0.0)  # buckets are separate


async def test_a_token_bucket_is_shared_by_every_store_on_the_same_data(
    store: Store, other_store: Store
) -> None:
    rate = Rate(4, 3600.0)
    takes = await asyncio.gather(
        *(s.take_tokens("rate:shared", rate, 1) for s in (store, other_store) * 4)
    )
    assert sum(granted for granted, _ in takes) == 4


async def test_a_token_bucket_refills_at_its_rate(store: Store) -> None:
    rate = Rate(20, 1.0)  # a token every 50 ms
    assert (await store.take_tokens("rate:fast", rate, 20))[0] == 20
    granted, retry_in = await store.take_tokens("rate:fast", rate, 1)
    if granted == 0:
        assert 0.0 < retry_in <= 0.05
        await asyncio.sleep(retry_in + 0.06)  # the refill is what is under test
        granted, _ = await store.take_tokens("rate:fast", rate, 1)
    assert granted == 1


# -- slots of concurrency caps ------------------------------------------------------------


async def take(store: Store, caps: list[tuple[str, int]], run_id: str, step: str, n: int) -> bool:
    """One take alone in a call of its own."""
    [granted] = await store.sync_slots([], [SlotTake(run_id, step, n, tuple(caps))])
    return granted


async def free(store: Store, run_id: str, step: str | None = None, attempt: int = 0) -> None:
    """One free alone in a call of its own."""
    assert await store.sync_slots([SlotFree(run_id, step, attempt)], []) == []


async def test_slots_of_a_cap_are_taken_up_to_its_capacity_and_freed_per_attempt(
    store: Store,
) -> None:
    for run_id in ("r1", "r2"):
        await started_run(store, run_id)
    cap = [("step:a", 2)]
    assert await take(store, cap, "r1", "a", 1)
    assert await take(store, cap, "r1", "a", 1)  # held already: taken once
    assert await take(store, cap, "r2", "a", 1)
    assert not await take(store, cap, "r2", "b", 1)  # full
    assert await store.slot_holders("step:a") == [("r1", "a", 1), ("r2", "a", 1)]
    # A new attempt of a step takes over the slot of its earlier attempt.
    assert await take(store, cap, "r1", "a", 2)
    assert sorted(await store.slot_holders("step:a")) == [("r1", "a", 2), ("r2", "a", 1)]
    await free(store, "r1", "a", 1)  # a late free of the earlier attempt: no-op
    assert len(await store.slot_holders("step:a")) == 2
    await free(store, "r1", "a", 2)
    await free(store, "r1", "a", 2)  # freed twice: nothing more happens
    assert await store.slot_holders("step:a") == [("r2", "a", 1)]
    assert await take(store, cap, "r2", "b", 1)
    await free(store, "r2")  # every step of the run
    assert await store.slot_holders("step:a") == []


async def test_slots_of_several_caps_are_taken_all_or_none(store: Store) -> None:
    await started_run(store, "r1")
    assert await take(store, [("limit:gpu", 1)], "r1", "a", 1)
    both = [("step:b", 3), ("limit:gpu", 1)]
    assert not await take(store, both, "r1", "b", 1)
    assert await store.slot_holders("step:b") == []  # nothing taken of the free cap
    await free(store, "r1", "a", 1)
    assert await take(store, both, "r1", "b", 1)
    assert await store.slot_holders("step:b") == [("r1", "b", 1)]
    assert await store.slot_holders("limit:gpu") == [("r1", "b", 1)]


async def test_a_full_cap_frees_the_slots_of_runs_that_ended(store: Store) -> None:
    for run_id in ("r1", "r2"):
        await started_run(store, run_id)
    cap = [("step:a", 1)]
    assert await take(store, cap, "r1", "a", 1)
    assert not await take(store, cap, "r2", "a", 1)
    # r1's coordinator stopped before it freed the slot; then the run ended.
    await store.append([ev(K.RUN_CANCELLED, run_id="r1", ts=300.0)])
    assert await take(store, cap, "r2", "a", 1)
    assert await store.slot_holders("step:a") == [("r2", "a", 1)]


async def test_a_run_taken_over_keeps_the_slots_of_the_steps_it_names(store: Store) -> None:
    await started_run(store, "r1")
    await started_run(store, "r2")
    for step in ("a", "b"):
        assert await take(store, [("step:x", 5)], "r1", step, 1)
    assert await take(store, [("step:x", 5)], "r2", "a", 1)
    assert await store.keep_slots("r1", ["b", "c"]) == ["b"]
    assert sorted(await store.slot_holders("step:x")) == [("r1", "b", 1), ("r2", "a", 1)]
    assert await store.keep_slots("r1", []) == []
    assert await store.slot_holders("step:x") == [("r2", "a", 1)]


async def test_slots_of_a_cap_are_shared_by_every_store_on_the_same_data(
    store: Store, other_store: Store
) -> None:
    for i in range(8):
        await started_run(store, f"r{i}")
    takes = await asyncio.gather(
        *(take(s, [("step:a", 3)], f"r{i}", "a", 1) for i, s in enumerate((store, other_store) * 4))
    )
    assert sum(takes) == 3
    assert len(await other_store.slot_holders("step:a")) == 3


async def test_a_step_refused_a_slot_is_served_before_one_that_asks_later(store: Store) -> None:
    for run_id in ("r1", "r2", "r3"):
        await started_run(store, run_id)
    cap = [("step:a", 1)]
    assert await take(store, cap, "r1", "a", 1)
    assert not await take(store, cap, "r2", "a", 1)  # r2 waits now
    await free(store, "r1", "a", 1)
    # r1's coordinator asks at once for its next step: r2 asked first, the slot is its turn.
    assert not await take(store, cap, "r1", "b", 1)
    assert not await take(store, cap, "r3", "a", 1)
    assert await take(store, cap, "r2", "a", 1)
    await free(store, "r2", "a", 1)
    assert not await take(store, cap, "r3", "a", 1)  # r1's b asked before r3's a
    assert await take(store, cap, "r1", "b", 1)
    await free(store, "r1")  # a run's end forgets its waits too
    assert await take(store, cap, "r3", "a", 1)


def slot_take(run_id: str, step: str, cap: tuple[str, int], attempt: int = 1) -> SlotTake:
    return SlotTake(run_id, step, attempt, (cap,))


async def test_one_call_frees_first_then_answers_each_of_its_takes_in_order(store: Store) -> None:
    for run_id in ("r1", "r2", "r3"):
        await started_run(store, run_id)
    cap = ("step:a", 2)
    assert await store.sync_slots([], [slot_take("r1", "a", cap), slot_take("r2", "a", cap)]) == [
        True,
        True,
    ]
    # The slot freed by the call is free for its takes; the first take gets it.
    frees = [SlotFree("r1", "a", 1)]
    takes = [slot_take("r3", "a", cap), slot_take("r3", "b", cap), slot_take("r1", "b", cap)]
    assert await store.sync_slots(frees, takes) == [True, False, False]
    assert sorted(await store.slot_holders("step:a")) == [("r2", "a", 1), ("r3", "a", 1)]
    # A run's end (a free with no step) frees every slot of the run in the same call.
    assert await store.sync_slots([SlotFree("r3")], [slot_take("r3", "b", cap)]) == [False]
    assert await store.slot_holders("step:a") == [("r2", "a", 1)]
    assert await store.sync_slots([], []) == []


async def test_a_step_refused_in_one_call_is_served_before_steps_of_later_calls(
    store: Store,
) -> None:
    for run_id in ("r1", "r2", "r3"):
        await started_run(store, run_id)
    cap = ("step:a", 1)
    assert await store.sync_slots([], [slot_take("r1", "a", cap), slot_take("r2", "a", cap)]) == [
        True,
        False,  # r2 waits now
    ]
    frees = [SlotFree("r1", "a", 1)]
    takes = [slot_take("r3", "a", cap), slot_take("r2", "a", cap)]
    assert await store.sync_slots(frees, takes) == [False, True]  # r2 asked before r3


async def test_a_call_made_again_takes_and_frees_nothing_twice(store: Store) -> None:
    """A call retried after a transient error (it may have committed unheard of) leaves
    the slots as one call would."""
    for run_id in ("r1", "r2", "r3"):
        await started_run(store, run_id)
    cap = ("step:a", 2)
    assert await take(store, [cap], "r1", "a", 1)
    assert await take(store, [cap], "r1", "b", 1)
    frees = [SlotFree("r1", "a", 1)]
    takes = [slot_take("r2", "a", cap), slot_take("r3", "a", cap)]
    assert await store.sync_slots(frees, takes) == [True, False]
    assert await store.sync_slots(frees, takes) == [True, False]
    assert sorted(await store.slot_holders("step:a")) == [("r1", "b", 1), ("r2", "a", 1)]
    # The held step's next attempt keeps its one slot, however often it asks.
    takes = [slot_take("r2", "a", cap, attempt=2)]
    for _ in range(2):
        assert await store.sync_slots([SlotFree("r1", "b", 1)], takes) == [True]
    assert await store.slot_holders("step:a") == [("r2", "a", 2)]


async def test_calls_of_two_stores_taking_several_caps_in_any_order_respect_each_cap(
    store: Store, other_store: Store
) -> None:
    """Takes of caps named in either order, from two stores at once: none waits forever
    for the other (the caps are locked in one order) and no cap is exceeded."""
    for i in range(12):
        await started_run(store, f"r{i}")
    gpu, disk = ("limit:gpu", 3), ("limit:disk", 4)

    def call(i: int) -> list[SlotTake]:
        caps = (gpu, disk) if i % 2 else (disk, gpu)
        return [SlotTake(f"r{i}", step, 1, caps) for step in ("a", "b")]

    answers = await asyncio.wait_for(
        asyncio.gather(
            *(s.sync_slots([], call(i)) for i, s in enumerate((store, other_store) * 6))
        ),
        timeout=20,
    )
    granted = sum(sum(a) for a in answers)
    assert granted == 3
    assert len(await store.slot_holders("limit:gpu")) == 3
    assert len(await store.slot_holders("limit:disk")) == 3


async def test_a_call_the_database_refuses_midway_takes_and_frees_nothing(
    store: Store,
) -> None:
    """One transaction: a take the database cannot write (PostgreSQL refuses NUL in text)
    undoes the frees before it."""
    if not isinstance(store, PostgresStore):
        pytest.skip("only PostgreSQL refuses this value")
    for run_id in ("r1", "r2"):
        await started_run(store, run_id)
    cap = ("step:a", 1)
    assert await take(store, [cap], "r1", "a", 1)
    with pytest.raises(StoreError):
        await store.sync_slots(
            [SlotFree("r1", "a", 1)], [slot_take("r2", "a", cap), slot_take("r2", "b\x00", cap)]
        )
    assert await store.slot_holders("step:a") == [("r1", "a", 1)]
