"""Helpers every store adapter shares: row values to and from their stored forms."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from aexec.errors import LeaseLostError, StoreError
from aexec.events import Event, EventKind
from aexec.limits import Rate, refill, take_tokens
from aexec.plan import Plan
from aexec.store import (
    Attempted,
    DeliveryStatus,
    Fence,
    RunRecord,
    StepRecord,
    WebhookDelivery,
    fold,
)
from aexec.types import ErrorInfo, RunStatus, StepStatus

_JSON = json.JSONEncoder(default=str)  # one encoder: json.dumps(default=) builds one a call


def dump_json(value: dict[str, Any], what: str) -> str:
    """JSON text of ``value``; values JSON has no type for (datetime, bytes, sets, the
    codec's other extensions) are kept as their ``str()``: rows and the log are for reading,
    and a value that can never be stored must not stall a writer that retries."""
    try:
        return _JSON.encode(value)
    except (TypeError, ValueError) as exc:  # keys JSON cannot hold, or a reference cycle
        raise StoreError(f"{what} cannot be stored as JSON: {exc}") from exc


def check_limit(limit: int) -> None:
    if limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")


def check_offset(offset: int) -> None:
    if offset < 0:
        raise ValueError(f"offset must be >= 0, not {offset}")


def step_counts(rows: Iterable[Sequence[Any]]) -> dict[str, dict[StepStatus, int]]:
    """``{run_id: {status: n}}`` from ``(run_id, status, n)`` rows."""
    counts: dict[str, dict[StepStatus, int]] = {}
    for run_id, status, n in rows:
        counts.setdefault(run_id, {})[StepStatus(status)] = int(n)
    return counts


def check_lease(lease: float) -> None:
    if not lease > 0:  # NaN too
        raise ValueError(f"lease must be a positive number of seconds, not {lease!r}")


def fence_lost(fence: Fence, owners: Iterable[tuple[str, str | None, int]]) -> list[str]:
    """The runs of ``owners`` (``run_id, owner, epoch`` as the rows read now) that
    ``fence`` does not hold any more, sorted."""
    held, owner = fence.epochs, fence.owner
    return sorted(
        run_id
        for run_id, run_owner, epoch in owners
        if run_owner != owner or held.get(run_id) != epoch
    )


def lease_lost(lost: Sequence[str]) -> LeaseLostError:
    """The error of a fenced write that found ``lost`` runs no longer its writer's."""
    shown = ", ".join(repr(r) for r in lost[:3]) + (", ..." if len(lost) > 3 else "")
    return LeaseLostError(f"{len(lost)} run(s) taken over by another coordinator: {shown}", lost)


def failed_event(run_id: str, error: str, ts: float) -> Event:
    """The ``run_failed`` event :meth:`~aexec.store.Store.fail_run` logs."""
    return Event(EventKind.RUN_FAILED, run_id, ts, data={"error": error})


def submitted(run: RunRecord, plan: Plan, notify: str | None = None) -> Event:
    """The ``run_submitted`` event :meth:`~aexec.store.Store.create_run` logs as the run's
    first: at its creation time, with its priority, its number of steps and, for a run a
    remote client submitted, the client's queue (``notify``); for a child run, its parent
    run and step."""
    data: dict[str, Any] = {"priority": run.priority, "steps": len(plan.steps)}
    if run.parent_step is not None:
        data["parent"], data["parent_step"] = run.parent, run.parent_step
    if notify is not None:
        data["notify"] = notify
    return Event(EventKind.RUN_SUBMITTED, run.run_id, run.created_at, data=data)


def change_rounds(events: Sequence[Event]) -> list[list[Event]]:
    """The events of a batch that change a row, in rounds: the n-th change to each row goes
    in round n, in batch order.

    Changes to different rows commute, so applying the rounds in order, the changes of one
    round in any order (or in one statement), has the same effect as applying the events
    one by one.  A batch that touches each row once is one round.
    """
    rounds: list[list[Event]] = []
    changes: dict[tuple[str, str | None], int] = {}
    step_kinds, run_kinds = fold.STEP_STATUS, fold.RUN_STATUS
    for event in events:  # which row each event changes, as fold.apply decides
        if event.kind in step_kinds:
            if event.step is None:
                continue
            row: tuple[str, str | None] = (event.run_id, event.step)
        elif event.kind in run_kinds:
            row = (event.run_id, None)
        else:
            continue  # logged only: run_submitted, run_resumed, step_progress, ...
        n = changes.get(row, 0)
        changes[row] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(event)
    return rounds


def row_changes(events: Sequence[Event]) -> list[Event]:
    """The events of a batch whose row changes a store must apply: all of them but a
    ``step_dispatched`` that the next change to its step in the batch supersedes (one for
    the same or a later attempt).

    Every step statement of the SQL stores sets the status and the attempt under one guard
    (an unfinished step, at this attempt or an older one), and ``step_dispatched`` sets
    nothing else: if its guard holds, the next change's holds after it and before it alike,
    and overwrites all it set; if not, it changes nothing.  So the row ends the same, and
    an embedded run, whose dispatches and completions share commits, updates each step
    once instead of twice.  (The events are all logged even so.)
    """
    kept: list[Event | None] = []
    dispatched: dict[tuple[str, str], int] = {}  # row -> position in kept of its dispatch
    step_kinds = fold.STEP_STATUS
    for event in events:
        if event.kind in step_kinds and event.step is not None:
            row = (event.run_id, event.step)
            earlier = dispatched.pop(row, None)
            if earlier is not None:
                before = kept[earlier]
                if before is not None and before.attempt <= event.attempt:
                    kept[earlier] = None
            if event.kind is EventKind.STEP_DISPATCHED:
                dispatched[row] = len(kept)
        kept.append(event)
    return [event for event in kept if event is not None]


def change_data(event: Event) -> tuple[str | None, str | None, int]:
    """``(worker, error, failure)``: what a row-changing event's data gives the SQL that
    applies it, as :mod:`~aexec.store.fold` reads it: the worker of step_started; the error
    of step_retrying and step_failed (as ``ErrorInfo`` JSON) and whether the attempt
    counts as a failure (1) or was lost (0); the message of run_failed and run_cancelled;
    None (and 0) for the rest."""
    kind = event.kind
    if kind is EventKind.STEP_STARTED:
        return fold.step_worker(event), None, 0
    if kind is EventKind.STEP_RETRYING or kind is EventKind.STEP_FAILED:
        info = fold.step_error(event)
        error = None if info is None else json.dumps(info.to_dict())
        return None, error, fold.step_failure(event)
    if kind is EventKind.RUN_FAILED or kind is EventKind.RUN_CANCELLED:
        return None, fold.run_error(event), 0
    return None, None, 0


# Rows as both SQL stores select them (the column order of their queries).


def run_record(row: Sequence[Any]) -> RunRecord:
    """``run_id, pipeline, plan_digest, status, priority, params, created_at, started_at,
    finished_at, result, error, owner, lease_until, epoch, tags, parent, parent_step``
    (params and tags as JSON text)."""
    return RunRecord(
        run_id=row[0],
        pipeline=row[1],
        plan_digest=row[2],
        status=RunStatus(row[3]),
        priority=row[4],
        params=json.loads(row[5]),
        created_at=row[6],
        started_at=row[7],
        finished_at=row[8],
        result=row[9],
        error=row[10],
        owner=row[11],
        lease_until=row[12],
        epoch=row[13],
        tags=json.loads(row[14]) if row[14] else {},
        parent=row[15],
        parent_step=row[16],
    )


def run_columns(run: RunRecord, params: str) -> tuple[Any, ...]:
    """The values :func:`run_record` reads back, in its column order (``params`` and
    ``tags`` as JSON)."""
    return (
        run.run_id,
        run.pipeline,
        run.plan_digest,
        run.status.value,
        run.priority,
        params,
        run.created_at,
        run.started_at,
        run.finished_at,
        run.result,
        run.error,
        run.owner,
        run.lease_until,
        run.epoch,
        json.dumps(run.tags, ensure_ascii=False, sort_keys=True),
        run.parent,
        run.parent_step,
    )


def step_record(row: Sequence[Any]) -> StepRecord:
    """``run_id, key, name, queue, status, attempts, started_at, finished_at, worker, error,
    output, failures, confirmed``."""
    return StepRecord(
        run_id=row[0],
        key=row[1],
        name=row[2],
        queue=row[3],
        status=StepStatus(row[4]),
        attempts=row[5],
        started_at=row[6],
        finished_at=row[7],
        worker=row[8],
        error=None if row[9] is None else ErrorInfo.from_dict(json.loads(row[9])),
        output=row[10],
        failures=row[11],
        confirmed=row[12],
    )


def event(row: Sequence[Any]) -> Event:
    """``seq, run_id, ts, kind, step, attempt, data``."""
    return Event(
        kind=EventKind(row[3]),
        run_id=row[1],
        ts=row[2],
        step=row[4],
        attempt=row[5],
        data={} if row[6] is None else json.loads(row[6]),
        seq=row[0],
    )


DELIVERY_COLUMNS = (
    "id, run_id, url, event, body, created_at, next_at, status, attempts, finished_at, "
    "last_status, last_error"
)
"""The columns of a delivery row, in :class:`~aexec.store.WebhookDelivery` field order."""


def delivery_record(row: Sequence[Any]) -> WebhookDelivery:
    """A delivery from a row of :data:`DELIVERY_COLUMNS`."""
    (id_, run_id, url, event, body, created, next_at, status, attempts, finished, code, err) = row
    return WebhookDelivery(
        id_,
        run_id,
        url,
        event,
        bytes(body),
        created,
        next_at,
        DeliveryStatus(status),
        attempts,
        finished,
        code,
        err,
    )


def attempted(delivery: WebhookDelivery, outcome: Attempted) -> WebhookDelivery:
    """``delivery`` after the attempt ``outcome`` (one rule for every store)."""
    if outcome.delivered:
        status = DeliveryStatus.DELIVERED
    elif outcome.next_at is None:
        status = DeliveryStatus.FAILED
    else:
        status = DeliveryStatus.PENDING
    return WebhookDelivery(
        delivery.id,
        delivery.run_id,
        delivery.url,
        delivery.event,
        delivery.body,
        delivery.created_at,
        delivery.next_at if outcome.next_at is None else outcome.next_at,
        status,
        delivery.attempts + 1,
        None if status is DeliveryStatus.PENDING else outcome.ts,
        outcome.status,
        outcome.error,
    )


def take_from_bucket(
    stored: tuple[float, float] | None, now: float, rate: Rate, want: int
) -> tuple[float, int, float]:
    """A token bucket that held ``stored`` (tokens, updated_at; None: a new bucket, full)
    gives up to ``want`` tokens at ``now``: the tokens it keeps, those granted and the
    seconds until its next one (0 if it keeps one), as :meth:`Store.take_tokens
    <aexec.store.Store.take_tokens>` returns them."""
    if want < 0:
        raise StoreError("cannot take a negative number of tokens")
    tokens = float(rate.count) if stored is None else refill(stored[0], now - stored[1], rate)
    return take_tokens(tokens, want, rate)


SLOT_WAIT_TTL = 2.0
"""Seconds after which a step refused a slot of a cap and not asking again is no longer
served before those that asked later (its coordinator polls every 0.25 s while it waits)."""
