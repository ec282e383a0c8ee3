"""``aexec runs list | show | logs | prune``: inspect runs in the store, delete old ones."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from aexec.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    parse_tag,
    resolve_settings,
    run_async,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aexec.config import Settings
    from aexec.events import Event
    from aexec.executor import Executor
    from aexec.plan import Plan
    from aexec.store import RunRecord, StepRecord, WebhookDelivery

log = logging.getLogger(__name__)


def cmd_runs_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    return run_async(_runs_list(resolve_settings(args), args))


async def _runs_list(settings: Settings, args: argparse.Namespace) -> int:
    from aexec.cli.display import dump_json, runs_table
    from aexec.cli.report import run_summary
    from aexec.executor import Executor
    from aexec.types import RunStatus

    status = RunStatus(args.status) if args.status else None
    tag = parse_tag(args.tag) if args.tag else None
    async with Executor(settings) as ex:
        runs = await ex.list_runs(limit=args.limit, status=status, pipeline=args.pipeline, tag=tag)
        positions = await _queue_positions(ex, runs)
    if args.json:
        for r in runs:
            summary = run_summary(r)
            if r.run_id in positions:
                summary["position"] = positions[r.run_id]
            sys.stdout.write(dump_json(summary) + "\n")
    elif runs:
        sys.stdout.write(runs_table(runs, positions) + "\n")
    else:
        sys.stderr.write("no runs\n")
    return EXIT_OK


async def _queue_positions(ex: Executor, runs: list[RunRecord]) -> dict[str, int]:
    """Where each run not started yet (``pending``: queued for admission) is in the
    queue, 1 first, in the order coordinators admit them (:mod:`aexec.admission`)."""
    import time

    from aexec.admission import Candidate, queue_order
    from aexec.types import RunStatus

    if not any(r.status is RunStatus.PENDING for r in runs):
        return {}
    pending = await ex.list_runs(limit=100_000, status=RunStatus.PENDING)
    order = queue_order(
        (Candidate(r.run_id, r.priority, r.created_at, r.tags) for r in pending), time.time()
    )
    return {run_id: position for position, run_id in enumerate(order, start=1)}


def cmd_runs_cancel(args: argparse.Namespace) -> int:
    return run_async(_runs_cancel(resolve_settings(args), args))


async def _runs_cancel(settings: Settings, args: argparse.Namespace) -> int:
    """Ask for the run to be cancelled (durably: :meth:`Executor.cancel
    <aexec.executor.Executor.cancel>`), then, unless ``--no-wait``, follow it in the store
    until it ends.  A run that ended already is a no-op (exit 0)."""
    import asyncio
    import contextlib

    from aexec.executor import Executor
    from aexec.types import RunStatus

    async with Executor(settings) as ex:
        record = await _find_run(ex, args.run_id)
        run_id = record.run_id
        if record.status.finished:
            sys.stdout.write(f"run {run_id} already ended {record.status}: nothing to cancel\n")
            return EXIT_OK
        if settings.embedded:
            # The process running it finds the request at its next lease renewal.
            await ex.store.request_cancel(run_id, args.reason)
        else:
            await ex.cancel(run_id, args.reason)
        sys.stderr.write(f"cancelling run {run_id}\n")
        if args.no_wait:
            return EXIT_OK
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.timeout):
                events = ex.store.follow(run_id)
                try:
                    async for _ in events:
                        pass  # it ends with the run's ending event
                finally:
                    aclose = getattr(events, "aclose", None)
                    if aclose is not None:
                        await aclose()
        record = await _find_run(ex, run_id)
    if record.status is RunStatus.PENDING or record.status is RunStatus.RUNNING:
        sys.stdout.write(
            f"run {run_id} is still {record.status} after {args.timeout:g} s: the cancel "
            "request is kept, its coordinator acts on it when it can\n"
        )
        return EXIT_FAILED
    sys.stdout.write(f"run {run_id} {record.status}\n")
    return EXIT_OK


def cmd_runs_show(args: argparse.Namespace) -> int:
    return run_async(_runs_show(resolve_settings(args), args))


async def _runs_show(settings: Settings, args: argparse.Namespace) -> int:
    from aexec.cli.display import deliveries_table, dump_json, run_details
    from aexec.cli.report import jsonable, run_report, step_notes
    from aexec.executor import Executor
    from aexec.types import RunStatus
    from aexec.waiting import waiting_for
    from aexec.webhooks import describe

    async with Executor(settings) as ex:
        record = await _find_run(ex, args.run_id)
        steps = await ex.get_steps(record.run_id)
        result = await ex.load_result(record) if record.status is RunStatus.SUCCEEDED else None
        notes = step_notes(await ex.get_events(record.run_id))
        plan = await ex.store.get_plan(record.plan_digest)
        deliveries = await ex.get_deliveries(record.run_id)
        reasons = {} if record.status.finished else waiting_for(record, steps, plan)
    waiting = {} if plan is None else await _waiting_for_versions(settings, plan, steps)
    if args.json:
        report = run_report(record, steps, result, notes)
        for key, reason in reasons.items():
            report["steps"][key]["waiting_for"] = reason
        for key, address in waiting.items():
            report["steps"][key]["waiting_for"] = address
        if deliveries:  # else the same shape as `run --json`
            report["webhooks"] = [describe(d) for d in deliveries]
        sys.stdout.write(dump_json(report) + "\n")
    else:
        shown = None if result is None else dump_json(jsonable(result))
        notes |= {key: f"waits for {reason}" for key, reason in reasons.items()}
        notes |= {
            key: f"waiting for version: no live worker serves {a}" for key, a in waiting.items()
        }
        sys.stdout.write(run_details(record, steps, shown, notes) + "\n")
        if deliveries:
            sys.stdout.write("\n" + deliveries_table(deliveries) + "\n")
    return EXIT_OK


async def _waiting_for_versions(
    settings: Settings, plan: Plan, steps: Sequence[StepRecord]
) -> dict[str, str]:
    """The queued steps that ask for a version no live worker serves: their keys and the
    ``name@version`` they wait for (nothing without a broker to ask the workers on)."""
    from aexec.plan import NATIVE
    from aexec.service import find_workers
    from aexec.types import StepStatus

    asking = {
        s.key: declared.address
        for s in steps
        if s.status is StepStatus.QUEUED
        and (declared := plan.declared(s.key)) is not None
        and declared.version is not None
        and declared.kind == NATIVE  # Celery workers announce nothing: a queue routes them
    }
    if not asking or settings.embedded:
        return {}
    served = {name for w in await find_workers(settings, wait=0.5) for name in w.steps}
    return {key: address for key, address in asking.items() if address not in served}


def cmd_runs_logs(args: argparse.Namespace) -> int:
    return run_async(_runs_logs(resolve_settings(args), args))


async def _runs_logs(settings: Settings, args: argparse.Namespace) -> int:
    from aexec.cli.display import dump_json, event_line
    from aexec.executor import Executor

    page = 1000
    step = args.step

    def show(event: Event) -> None:
        if step is not None and event.step != step:
            return
        sys.stdout.write((dump_json(event.to_dict()) if args.json else event_line(event)) + "\n")

    async with Executor(settings) as ex:
        record = await _find_run(ex, args.run_id)
        if step is not None:
            keys = {s.key for s in await ex.get_steps(record.run_id)}
            if step not in keys:
                raise UsageError(f"run {record.run_id} has no step {step!r}")
        after = 0
        while True:
            events = await ex.get_events(record.run_id, after=after, limit=page)
            for event in events:
                show(event)
            if events:
                after = events[-1].seq
            if len(events) < page:
                break
        if args.follow:
            sys.stdout.flush()
            follower = ex.store.follow(record.run_id, after=after)
            try:
                async for event in follower:
                    show(event)
                    sys.stdout.flush()
            finally:
                await follower.aclose()  # type: ignore[attr-defined]
        deliveries = [] if step is not None else await ex.get_deliveries(record.run_id)
    _write_deliveries(deliveries, as_json=args.json)  # about the run, not one step
    return EXIT_OK


def _write_deliveries(deliveries: list[WebhookDelivery], *, as_json: bool) -> None:
    """The run's webhook deliveries after its events, as ``runs logs`` shows them."""
    from aexec.cli.display import delivery_line, dump_json
    from aexec.webhooks import describe

    for delivery in deliveries:
        if as_json:
            line = dump_json({"kind": "webhook", **describe(delivery)})
        else:
            line = delivery_line(delivery)
        sys.stdout.write(line + "\n")


def cmd_runs_prune(args: argparse.Namespace) -> int:
    from aexec.errors import ConfigError
    from aexec.retention import parse_duration

    try:
        older_than = parse_duration(args.older_than)
    except ConfigError as exc:
        raise UsageError(f"--older-than: {exc}") from exc
    return run_async(_runs_prune(resolve_settings(args), args, older_than))


async def _runs_prune(settings: Settings, args: argparse.Namespace, older_than: float) -> int:
    import time

    from aexec.cli.display import dump_json, format_seconds, short_id
    from aexec.executor import Executor

    async with Executor(settings) as ex:
        pruned = await ex.prune_runs(older_than, dry_run=args.dry_run)
    now = time.time()
    for item in pruned:
        run = item.run
        if args.json:
            line = {
                "run_id": run.run_id,
                "pipeline": run.pipeline,
                "status": str(run.status),
                "finished_at": run.finished_at,
                "deleted": item.deleted,
                "objects": item.objects,
                "error": item.error,
            }
            sys.stdout.write(dump_json(line) + "\n")
            continue
        ago = format_seconds(None if run.finished_at is None else now - run.finished_at)
        what = f"run {short_id(run.run_id)} ({run.pipeline}, {run.status}, finished {ago} ago)"
        if item.error is not None:
            sys.stdout.write(f"kept {what}: {item.error}\n")
        elif item.deleted:
            sys.stdout.write(f"deleted {what} and {item.objects} objects\n")
        else:
            sys.stdout.write(f"would delete {what}\n")
    deleted = sum(item.deleted for item in pruned)
    failed = sum(item.error is not None for item in pruned)
    if args.dry_run:
        sys.stderr.write(f"{len(pruned)} runs would be deleted (dry run: nothing was)\n")
    else:
        kept = f"; {failed} kept by errors" if failed else ""
        sys.stderr.write(f"deleted {deleted} runs{kept}\n")
    return EXIT_FAILED if failed else EXIT_OK


async def _find_run(ex: Executor, run_id: str) -> RunRecord:
    from aexec.errors import StoreError

    try:
        record = await ex.get_run(run_id)
    except StoreError as exc:  # an ambiguous prefix
        raise UsageError(str(exc)) from exc
    if record is None:
        hint = " (a prefix needs at least 4 characters)" if len(run_id) < 4 else ""
        raise UsageError(f"no run matches {run_id!r}{hint}")
    return record
