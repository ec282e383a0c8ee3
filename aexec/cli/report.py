"""What ``run --json`` and ``runs show --json`` print, and JSON-safe values for the CLI."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import decimal
import math
import uuid
from collections.abc import Mapping
from typing import Any

from aexec.store import RunRecord, StepRecord


def run_report(run: RunRecord, steps: list[StepRecord], result: Any) -> dict[str, Any]:
    """The report of a run, the ``--json`` contract::

        {"run_id": str, "status": "succeeded" | "failed" | "cancelled" | ...,
         "result": <the pipeline result, JSON-safe, or null>, "error": str | null,
         "steps": {step_key: {"status": str, "attempts": int}}}

    plus ``"parent"`` (the run it reruns) and ``"tags"`` for a run that has them.  Steps
    keep plan order.  ``result`` goes through :func:`jsonable`.
    """
    report: dict[str, Any] = {
        "run_id": run.run_id,
        "status": str(run.status),
        "result": jsonable(result),
        "error": run.error,
        "steps": {s.key: {"status": str(s.status), "attempts": s.attempts} for s in steps},
    }
    if run.parent is not None:
        report["parent"] = run.parent
    if run.tags:
        report["tags"] = dict(run.tags)
    return report


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
