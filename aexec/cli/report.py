"""What ``run --json`` and ``runs show --json`` print, and JSON-safe values for the CLI."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import decimal
import math
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from aexec.children import WORKER_PREFIX as CHILD_WORKER
from aexec.events import Event, EventKind
from aexec.store import RunRecord, StepRecord


def run_report(
    run: RunRecord,
    steps: list[StepRecord],
    result: Any,
    notes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The report of a run, the ``--json`` contract::

        {"run_id": str, "status": "succeeded" | "failed" | "cancelled" | ...,
         "result": <the pipeline result, JSON-safe, or null>, "error": str | null,
         "steps": {step_key: {"status": str, "attempts": int}}}

    plus ``"parent"`` (the run it reruns, or, with ``"parent_step"``, whose step runs it
    as a child run) and ``"tags"`` for a run that has them.  Steps keep plan order.
    ``result`` goes through :func:`jsonable`.  A step with a note (:func:`step_notes`) has
    it under ``"note"``; a step that runs a child run names it under ``"child_run"``.
    """
    notes = notes or {}
    steps_report: dict[str, dict[str, Any]] = {}
    for s in steps:
        steps_report[s.key] = {"status": str(s.status), "attempts": s.attempts}
        if s.key in notes:
            steps_report[s.key]["note"] = notes[s.key]
        if s.worker is not None and s.worker.startswith(CHILD_WORKER):
            steps_report[s.key]["child_run"] = s.worker.removeprefix(CHILD_WORKER)
    report: dict[str, Any] = {
        "run_id": run.run_id,
        "status": str(run.status),
        "result": jsonable(result),
        "error": run.error,
        "steps": steps_report,
    }
    if run.parent is not None:
        report["parent"] = run.parent
    if run.parent_step is not None:
        report["parent_step"] = run.parent_step
    if run.tags:
        report["tags"] = dict(run.tags)
    return report


def step_notes(events: Iterable[Event]) -> dict[str, str]:
    """What a run's dynamic steps did, by step key, from its event log: ``skipped: <why>``,
    ``cached`` (its output came from the step cache), ``map of N steps``, ``child run
    <id>`` (``run_as_child=True``), and ``waiting: <why>, again at <time>`` for a step
    waiting to run again."""
    notes: dict[str, str] = {}
    for event in events:
        step, data = event.step, event.data
        if step is None:
            continue
        match event.kind:
            case EventKind.STEP_SKIPPED if data.get("reason"):
                notes[step] = f"skipped: {data['reason']}"
            case EventKind.STEP_SUCCEEDED if data.get("cached"):
                notes[step] = "cached"
            case EventKind.STEP_STARTED if str(data.get("worker", "")).startswith(CHILD_WORKER):
                notes[step] = f"child run {str(data['worker']).removeprefix(CHILD_WORKER)}"
            case EventKind.STEP_EXPANDED:
                notes[step] = f"map of {data.get('count')} steps"
            case EventKind.STEP_WAITING:
                due = dt.datetime.fromtimestamp(float(data.get("due", 0.0)))
                notes[step] = f"waiting: {data.get('reason') or 'again'}, again at {due:%H:%M:%S}"
            case EventKind.STEP_DISPATCHED | EventKind.STEP_SUCCEEDED | EventKind.STEP_FAILED:
                if notes.get(step, "").startswith("waiting"):
                    del notes[step]
    return notes


def run_summary(run: RunRecord) -> dict[str, Any]:
    """One ``runs list --json`` line: the run's header, timestamps in float epoch seconds."""
    return {
        "run_id": run.run_id,
        "pipeline": run.pipeline,
        "status": str(run.status),
        "priority": run.priority,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "duration": duration(run),
        "error": run.error,
        "tags": run.tags,
        "parent": run.parent,
        "parent_step": run.parent_step,
    }


def duration(run: RunRecord) -> float | None:
    """Seconds from start (or creation) to finish; None while the run is unfinished."""
    if run.finished_at is None:
        return None
    start = run.started_at if run.started_at is not None else run.created_at
    return max(0.0, run.finished_at - start)


def jsonable(value: Any) -> Any:
    """``value`` made of JSON types only, converting what the codec can carry and JSON cannot.

    * ``bytes``: the text when they are valid UTF-8, otherwise their base64 encoding;
    * ``datetime``, ``date``, ``time``: ISO 8601 text;
    * ``UUID``, ``Decimal``: their text (no precision lost);
    * ``set``, ``frozenset``: lists (sorted when the items are comparable); tuples: lists;
    * non-finite floats: ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (JSON has no literal);
    * mapping keys that JSON cannot take: their ``str``.

    Anything else unknown becomes its ``repr``: the report must always print.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii")
    if isinstance(value, Mapping):
        return {_key(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        items = list(value)
        with contextlib.suppress(TypeError):  # mixed types: keep the set's order
            items.sort()
        return [jsonable(v) for v in items]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    return repr(value)


def _key(key: Any) -> str | int | float | bool | None:
    if key is None or isinstance(key, str | int | bool):
        return key
    if isinstance(key, float) and math.isfinite(key):
        return key
    converted = jsonable(key)
    return converted if isinstance(converted, str) else str(converted)
