"""What a running step reports besides its result, as the wire carries it and as the event
log records it: progress, log records, stdout/stderr lines, custom events, and markers of
what was dropped.

A worker sends these as *entries* in :class:`~aexec.messages.Output` messages, one message
per flush (:mod:`aexec.output`); each entry is ``[run_id, step_key, attempt, ts, kind,
data]``.  The coordinator turns each entry of a run it drives into one event
(:func:`entry_event`), trusting nothing in ``data``: every text is clipped and every value
made plain, so that a worker of any code base, however buggy, can neither poison a run's
event log nor make the coordinator hold more than a bounded amount.

======================  =====================  =========================================
entry kind              event kind             event data
======================  =====================  =========================================
``progress``            ``step_progress``      ``fraction`` and/or ``message``
``log``                 ``step_log``           ``level``, ``logger``, ``message``
``stdout``/``stderr``   ``step_output``        ``stream``, ``lines`` (a list of lines)
``event``               ``step_event``         ``name``, ``data``
``dropped``             ``step_output_dropped`` ``entries``, ``bytes``, ``reason``
======================  =====================  =========================================

Every event also carries ``worker``.  Telemetry is best-effort: it never blocks or fails a
step, and whatever is dropped (past a limit, or undeliverable) is counted in a
``step_output_dropped`` marker where it can be.
"""

from __future__ import annotations

import math
from typing import Any

from aexec.events import Event, EventKind

MAX_TEXT = 16 * 1024
"""Characters of one log message, output line, progress message or event name kept."""

MAX_LINES = 10_000
"""Lines of one ``step_output`` entry kept."""

MAX_DATA = 64 * 1024
"""Bytes (roughly) of a custom event's data kept: larger data is dropped, with a marker."""

MAX_DEPTH = 20
"""Nesting of a custom event's data kept (deeper values are kept as their ``repr``)."""

TRUNCATED = " …[truncated]"

_EVENT_KINDS = {
    "progress": EventKind.STEP_PROGRESS,
    "log": EventKind.STEP_LOG,
    "stdout": EventKind.STEP_OUTPUT,
    "stderr": EventKind.STEP_OUTPUT,
    "event": EventKind.STEP_EVENT,
    "dropped": EventKind.STEP_OUTPUT_DROPPED,
}


def clip_text(value: Any, limit: int = MAX_TEXT) -> str:
    """``value`` as text of at most ``limit`` characters (plus a marker), with no NUL and
    no lone surrogate (which msgpack and the stores refuse)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[:limit] + TRUNCATED
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` made of what JSON and msgpack both hold: dicts with string keys, lists,
    text, finite numbers, booleans, None; anything else is its ``repr`` (clipped)."""
    if value is None or isinstance(value, bool | int):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 1 << 63:
            return str(value)
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return clip_text(value)
    if depth >= MAX_DEPTH:
        return clip_text(repr(value))
    if isinstance(value, dict):
        return {clip_text(k, 200): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return clip_text(repr(value))
    return clip_text(repr(value))


def size_of(value: Any) -> int:
    """A rough size in bytes of a plain value (what it costs to keep and send)."""
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, dict):
        return 2 + sum(len(k) + 3 + size_of(v) for k, v in value.items())
    if isinstance(value, list):
        return 2 + sum(size_of(v) + 1 for v in value)
    return 8


def entry_event(
    run_id: str,
    step_key: str,
    attempt: int,
    ts: float,
    kind: str,
    data: dict[str, Any],
    worker: str,
) -> Event:
    """The event an entry of worker ``worker`` becomes (``data`` is not trusted)."""
    out: dict[str, Any] = {"worker": worker}
    match kind:
        case "progress":
            fraction: Any = data.get("fraction")
            if _is_number(fraction) and math.isfinite(fraction):
                out["fraction"] = min(1.0, max(0.0, float(fraction)))
            if data.get("message") is not None:
                out["message"] = clip_text(data["message"])
        case "log":
            out["level"] = clip_text(data.get("level", "INFO"), 20)
            out["logger"] = clip_text(data.get("logger", ""), 200)
            out["message"] = clip_text(data.get("message", ""))
        case "stdout" | "stderr":
            lines = data.get("lines")
            if not isinstance(lines, list):
                lines = [] if lines is None else [lines]
            kept = [clip_text(line) for line in lines[:MAX_LINES]]
            if len(lines) > MAX_LINES:
                kept.append(f"…[{len(lines) - MAX_LINES} more lines dropped]")
            out["stream"] = kind
            out["lines"] = kept
        case "event":
            out["name"] = clip_text(data.get("name", ""), 200)
            out["data"] = plain(data.get("data"))
        case _:  # "dropped"
            for field in ("entries", "bytes"):
                count = data.get(field)
                if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
                    out[field] = count
            out["reason"] = clip_text(data.get("reason", "output dropped"), 500)
    return Event(_EVENT_KINDS[kind], run_id, ts, step_key, attempt, out)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def dropped_event(
    run_id: str, step_key: str, attempt: int, ts: float, entries: int, size: int, reason: str
) -> Event:
    """A ``step_output_dropped`` marker: ``entries`` entries of about ``size`` bytes were
    dropped, for ``reason``."""
    data = {"entries": entries, "bytes": size, "reason": reason}
    return Event(EventKind.STEP_OUTPUT_DROPPED, run_id, ts, step_key, attempt, data)


__all__ = [
    "MAX_TEXT",
    "clip_text",
    "dropped_event",
    "entry_event",
    "plain",
    "size_of",
]
