"""The JSON the API returns, built from store records: the ``--json`` shapes of the CLI
(:mod:`aexec.cli.report`) with the fields the pages need added beside them.

Pure functions, no I/O: :mod:`aexec.web.api` reads the store and hands the records here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aexec import codec
from aexec.cli.report import jsonable, run_report, run_summary
from aexec.errors import CodecError
from aexec.events import Event, EventKind
from aexec.plan import Plan
from aexec.store import RunRecord, StepRecord
from aexec.types import StepStatus

SUMMARY_LIMIT = 2000
"""Characters of a value's summary (a step's inputs, its output): the page shows a glimpse,
never megabytes."""


def run_row(run: RunRecord, counts: Mapping[StepStatus, int] | None) -> dict[str, Any]:
    """One row of the runs list: a ``runs list --json`` line plus its step counts."""
    row = run_summary(run)
    row["steps"] = {str(status): n for status, n in (counts or {}).items()}
    return row


def run_detail(
    run: RunRecord, steps: Sequence[StepRecord], result: Any, *, last_seq: int
) -> dict[str, Any]:
    """A run as ``runs show --json`` prints it, each step with its details, plus the run's
    header (``run``) and ``last_seq``, the event to follow the run from."""
    report = run_report(run, list(steps), result)
    report["steps"] = {s.key: step_row(s) for s in steps}
    report["run"] = {**run_summary(run), "params": jsonable(run.params)}
    report["last_seq"] = last_seq
    return report


def step_row(step: StepRecord) -> dict[str, Any]:
    """A step's status and attempts (the ``--json`` shape), with what the run page shows."""
    return {
        "status": str(step.status),
        "attempts": step.attempts,
        "name": step.name,
        "queue": step.queue,
        "worker": step.worker,
        "started_at": step.started_at,
        "finished_at": step.finished_at,
        "error": None if step.error is None else step.error.to_dict(),
    }


def plan_graph(plan: Plan) -> dict[str, Any]:
    """The DAG of a plan: its steps in plan order, each with the indices of its inputs."""
    return {
        "pipeline": plan.pipeline,
        "steps": [
            {"key": s.key, "name": s.name, "queue": s.queue, "deps": list(s.deps)}
            for s in plan.steps
        ],
        "result_deps": list(plan.result_deps),
    }


def step_detail(step: StepRecord, plan: Plan | None, events: Iterable[Event]) -> dict[str, Any]:
    """The step page: its row, a summary of its inputs (the call, inputs named by the step
    they come from) and of its output (an object reference shows as the key it names),
    every attempt with its worker, times and error, and its progress and log events."""
    detail = step_row(step)
    detail["key"] = step.key
    detail["inputs"] = None
    if plan is not None and step.key in plan.index:
        spec = plan.step(step.key)
        deps = [plan.steps[i].key for i in spec.deps]
        detail["deps"] = deps
        detail["inputs"] = summarize_call(spec.call, deps)
    detail["output"] = None if step.output is None else summarize(step.output)
    attempts: dict[int, dict[str, Any]] = {}
    lines: list[dict[str, Any]] = []
    for event in events:
        if event.kind in _ATTEMPT_EVENTS and event.attempt:
            attempt = attempts.setdefault(event.attempt, {"attempt": event.attempt})
            _fold_attempt(attempt, event)
        elif event.kind not in _ATTEMPT_EVENTS:
            lines.append(event.to_dict())
    detail["attempt_list"] = [attempts[n] for n in sorted(attempts)]
    detail["events"] = lines
    return detail


_ATTEMPT_EVENTS = frozenset(
    {
        EventKind.STEP_DISPATCHED,
        EventKind.STEP_STARTED,
        EventKind.STEP_RETRYING,
        EventKind.STEP_SUCCEEDED,
        EventKind.STEP_FAILED,
        EventKind.STEP_SKIPPED,
        EventKind.STEP_CANCELLED,
    }
)


def _fold_attempt(attempt: dict[str, Any], event: Event) -> None:
    match event.kind:
        case EventKind.STEP_DISPATCHED:
            attempt["dispatched_at"] = event.ts
        case EventKind.STEP_STARTED:
            attempt["started_at"] = event.ts
            attempt["worker"] = event.data.get("worker")
        case _:
            attempt["finished_at"] = event.ts
            attempt["status"] = _ENDS[event.kind]
            error = event.data.get("error")
            if isinstance(error, dict):
                attempt["error"] = error


_ENDS = {
    EventKind.STEP_RETRYING: "failed",
    EventKind.STEP_SUCCEEDED: "succeeded",
    EventKind.STEP_FAILED: "failed",
    EventKind.STEP_SKIPPED: "skipped",
    EventKind.STEP_CANCELLED: "cancelled",
}


UNREPORTED = "(worker not reported)"
"""The timeline's lane for attempts whose worker is not known (lost before they started)."""


def timeline(events: Iterable[Event]) -> list[dict[str, Any]]:
    """Every attempt that started or ended, for the Gantt chart: worker, step, attempt,
    start, end (None while it runs) and how it ended."""
    dispatched: dict[tuple[str, int], float] = {}
    open_: dict[tuple[str, int], dict[str, Any]] = {}
    bars: list[dict[str, Any]] = []
    for event in events:
        if event.step is None or not event.attempt:
            continue
        key = (event.step, event.attempt)
        if event.kind is EventKind.STEP_DISPATCHED:
            dispatched[key] = event.ts
        elif event.kind is EventKind.STEP_STARTED:
            worker = event.data.get("worker")
            open_[key] = _bar(worker if isinstance(worker, str) else "?", event, event.ts)
            bars.append(open_[key])
        elif event.kind in _ENDS and event.kind is not EventKind.STEP_SKIPPED:
            bar = open_.pop(key, None)
            if bar is None:
                # A quick step's start is not recorded: its completion says where and when.
                worker, started = event.data.get("worker"), event.data.get("started_at")
                if not isinstance(started, int | float) or isinstance(started, bool):
                    started = dispatched.get(key)
                if started is None:
                    continue  # cancelled before it was dispatched
                name = worker if isinstance(worker, str) and worker else UNREPORTED
                bar = _bar(name, event, float(started))
                bars.append(bar)
            bar["end"], bar["status"] = event.ts, _ENDS[event.kind]
    return bars


def _bar(worker: str, event: Event, start: float) -> dict[str, Any]:
    return {
        "worker": worker,
        "step": event.step,
        "attempt": event.attempt,
        "start": start,
        "end": None,
        "status": "running",
    }


def summarize(encoded: bytes) -> str:
    """A short text of an encoded value: JSON when it has a JSON form, clipped; object
    references show as ``<object KEY>``."""
    try:
        value, _ = codec.decode_with_refs(encoded, max_size=max(len(encoded), 1))
    except CodecError as exc:
        return f"<undecodable: {exc}>"
    value = codec.map_refs(value, lambda ref: f"<object {ref.key}>")
    return _clip(json.dumps(jsonable(value), ensure_ascii=False))


def summarize_call(call: bytes, deps: Sequence[str]) -> str:
    """A step's call template as ``{"args": [...], "kwargs": {...}}`` text, each input shown
    as ``<output of KEY>``."""
    try:
        template = codec.decode(call, max_size=max(len(call), 1))
    except CodecError as exc:
        return f"<undecodable: {exc}>"
    args, kwargs = template if isinstance(template, list) and len(template) == 2 else ([], {})
    shown = _slots({"args": args, "kwargs": kwargs}, deps)
    return _clip(json.dumps(jsonable(shown), ensure_ascii=False))


def _slots(value: Any, deps: Sequence[str]) -> Any:
    if isinstance(value, codec.Slot):
        key = deps[value.index] if 0 <= value.index < len(deps) else f"#{value.index}"
        return f"<output of {key}>"
    if isinstance(value, dict):
        return {k: _slots(v, deps) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_slots(v, deps) for v in value]
    return value


def _clip(text: str) -> str:
    if len(text) <= SUMMARY_LIMIT:
        return text
    return f"{text[:SUMMARY_LIMIT]}… ({len(text) - SUMMARY_LIMIT} more characters)"
