"""How events change run and step rows: the rule of the table in :mod:`aexec.store`, in
pure Python.

The memory store and a remote client's view of a run (``RemoteRun``) fold events with
:func:`apply`.  The SQL stores apply the same rule in SQL, so that an append stays a few
statements however many events it carries: ``sql/sqlite.sql`` has one section per event
kind, ``sql/postgres.sql`` the ``update_steps`` and ``update_runs`` sections.  A
property test in ``tests/contract/test_store.py`` holds every store and the remote view to
this module on random event sequences; change the rule here and in both files together.

Nothing here does I/O or imports an adapter.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from aexec.events import Event, EventKind
from aexec.store import RunRecord, StepRecord
from aexec.types import ErrorInfo, RunStatus, StepStatus

STEP_STATUS: dict[EventKind, StepStatus] = {
    EventKind.STEP_DISPATCHED: StepStatus.QUEUED,
    EventKind.STEP_STARTED: StepStatus.RUNNING,
    EventKind.STEP_RETRYING: StepStatus.RETRYING,
    EventKind.STEP_WAITING: StepStatus.RETRYING,  # aexec.again: runs again at a time
    EventKind.STEP_SUCCEEDED: StepStatus.SUCCEEDED,
    EventKind.STEP_FAILED: StepStatus.FAILED,
    EventKind.STEP_SKIPPED: StepStatus.SKIPPED,
    EventKind.STEP_CANCELLED: StepStatus.CANCELLED,
}
"""The status each step event moves its step to (when its attempt is current)."""

RUN_STATUS: dict[EventKind, RunStatus] = {
    EventKind.RUN_STARTED: RunStatus.RUNNING,
    EventKind.RUN_SUCCEEDED: RunStatus.SUCCEEDED,
    EventKind.RUN_FAILED: RunStatus.FAILED,
    EventKind.RUN_CANCELLED: RunStatus.CANCELLED,
}
"""The status each run event moves its run to (run_started: only a pending run)."""


def apply(run: RunRecord, steps: MutableMapping[str, StepRecord], event: Event) -> bool:
    """Apply one event of ``run`` to the run or to its step in ``steps`` (by key); True if
    a row changed.  Step events change their step's row, if it is in ``steps``; run
    events the run's row; step_expanded adds the rows of the steps a map expanded into;
    the rest (run_submitted, run_resumed, step_progress) no row."""
    if event.kind is EventKind.STEP_EXPANDED:
        added = False
        for _, key, name, queue in expansion(event):
            if key not in steps:
                steps[key] = StepRecord(run.run_id, key, name, queue)
                added = True
        return added
    status = STEP_STATUS.get(event.kind)
    if status is None:
        return apply_to_run(run, event)
    step = None if event.step is None else steps.get(event.step)
    return step is not None and _move_step(step, status, event)


def apply_to_step(step: StepRecord, event: Event) -> bool:
    """Compare-and-set on the attempt: only the current (or a newer) attempt of an
    unfinished step moves it.  Every change sets the status and the attempt; the other
    columns by kind, and step_retrying and step_failed count a failure unless the attempt
    was lost (as ``update_steps`` in postgres.sql and the step sections of sqlite.sql)."""
    status = STEP_STATUS.get(event.kind)
    return status is not None and _move_step(step, status, event)


def _move_step(step: StepRecord, status: StepStatus, event: Event) -> bool:
    if step.status.finished or event.attempt < step.attempts:
        return False
    step.status, step.attempts = status, event.attempt
    match event.kind:
        case EventKind.STEP_STARTED:
            step.started_at, step.worker = event.ts, step_worker(event)
        case EventKind.STEP_RETRYING:
            step.error = step_error(event)
            step.failures += step_failure(event)
        case EventKind.STEP_WAITING:
            step.error = None  # as the SQL stores: retrying takes the event's (no) error
        case EventKind.STEP_SUCCEEDED:
            step.output, step.finished_at, step.error = event.output, event.ts, None
        case EventKind.STEP_FAILED:
            step.error, step.finished_at = step_error(event), event.ts
            step.failures += step_failure(event)
    return True


def apply_to_run(run: RunRecord, event: Event) -> bool:
    """run_started moves only a pending run; an ending event only an unfinished one; a
    finished run never changes (as ``update_runs`` in postgres.sql and the run sections of
    sqlite.sql)."""
    kind = event.kind
    if kind is EventKind.RUN_STARTED:
        if run.status is not RunStatus.PENDING:
            return False
        run.status, run.started_at = RunStatus.RUNNING, event.ts
        return True
    if not kind.ends_run or run.status.finished:
        return False
    run.status, run.finished_at = RUN_STATUS[kind], event.ts
    if kind is EventKind.RUN_SUCCEEDED:
        run.result = event.output
    else:
        run.error = run_error(event)
    return True


# What an event's data gives its row (the SQL stores pass the same values to their SQL).


def expansion(event: Event) -> list[tuple[int, str, str, str]]:
    """step_expanded: the rows of the steps a map expanded into, as ``(position, key, name,
    queue)``: ``key[i]`` for i below ``data["count"]`` (``key[label]`` with
    ``data["labels"]``), at positions from ``data["position"]``, with the map's name and
    queue."""
    data, key = event.data, event.step
    count, position = data.get("count"), data.get("position")
    if not isinstance(count, int) or not isinstance(position, int) or key is None:
        return []
    name, queue = str(data.get("name", key)), str(data.get("queue", ""))
    return [(position + i, f"{key}[{label}]", name, queue) for i, label in enumerate(labels(event))]


def labels(event: Event) -> list[str]:
    """step_expanded: what keys the steps of the map, in order (``data["labels"]``, or
    their indices)."""
    count, given = event.data.get("count"), event.data.get("labels")
    if not isinstance(count, int):
        return []
    if isinstance(given, list | tuple) and len(given) == count:
        return [str(label) for label in given]
    return [str(i) for i in range(count)]


def step_worker(event: Event) -> str | None:
    """step_started: the worker running the attempt (``data["worker"]``)."""
    return text(event.data.get("worker"))


def step_failure(event: Event) -> int:
    """step_retrying and step_failed: 1 if the attempt really failed, 0 if it was lost
    (``data["lost"]``: its worker vanished, or its dispatch was not confirmed)."""
    return 0 if event.data.get("lost") else 1


def step_error(event: Event) -> ErrorInfo | None:
    """step_retrying and step_failed: the attempt's error (``data["error"]``)."""
    value = event.data.get("error")
    if value is None:
        return None
    if isinstance(value, dict):
        return ErrorInfo.from_dict(value)
    return ErrorInfo("Error", str(value))  # a bare message


def run_error(event: Event) -> str | None:
    """run_failed and run_cancelled: why (``data["error"]``)."""
    return text(event.data.get("error"))


def text(value: Any) -> str | None:
    return None if value is None else str(value)
