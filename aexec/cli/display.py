"""Human output of the CLI: live progress on a terminal, summaries, tables, event lines.

The live display uses ``rich`` and appears only when stderr is a terminal; otherwise the
CLI stays quiet until the run ends.  ``rich`` is imported only when it is about to be used.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, TextIO

from aexec.capture import outermost
from aexec.cli.report import duration
from aexec.events import Event, EventKind
from aexec.redaction import redact
from aexec.store import DeliveryStatus, RunRecord, StepRecord, WebhookDelivery
from aexec.types import ErrorInfo, StepStatus

_STEP_DONE = frozenset(
    {
        EventKind.STEP_SUCCEEDED,
        EventKind.STEP_FAILED,
        EventKind.STEP_SKIPPED,
        EventKind.STEP_CANCELLED,
    }
)


class Display(Protocol):
    live: bool
    """True when it shows events: only then are they worth streaming to it."""

    def __enter__(self) -> Display: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def update(self, event: Event) -> None: ...


class QuietDisplay:
    """Shows nothing: stderr is not a terminal."""

    live = False

    def __enter__(self) -> QuietDisplay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def update(self, event: Event) -> None:
        return None


class LiveDisplay:
    """A transient ``rich`` progress bar: steps finished of the plan, running and failed."""

    live = True

    def __init__(self, stream: TextIO, *, title: str, total: int) -> None:
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._console = Console(file=stream)
        self._escape = escape
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self._console,
            transient=True,
        )
        self._task = self._progress.add_task(title, total=max(total, 1), detail="")
        self._running: set[str] = set()
        self._failed = 0
        self._capture = outermost()

    def __enter__(self) -> LiveDisplay:
        self._progress.start()  # it replaces sys.stdout and sys.stderr...
        self._capture.__enter__()  # ...so steps' prints are captured around it
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._capture.__exit__(exc_type, exc, tb)
        self._progress.stop()

    def update(self, event: Event) -> None:
        key = event.step
        if event.kind is EventKind.STEP_STARTED and key is not None:
            self._running.add(key)
        elif event.kind in _STEP_DONE:
            if key is not None:
                self._running.discard(key)
            if event.kind is EventKind.STEP_FAILED:
                self._failed += 1
            self._progress.advance(self._task)
        elif event.kind is EventKind.STEP_RETRYING:
            if key is not None:
                self._running.discard(key)
            error = event.data.get("error")
            reason = str(ErrorInfo.from_dict(error)) if isinstance(error, dict) else ""
            self._console.print(
                f"[yellow]step {self._escape(repr(key))} attempt {event.attempt} failed, "
                f"retrying[/] {self._escape(_one_line(reason))}",
                highlight=False,
            )
        else:
            return
        detail = f"{len(self._running)} running"
        if self._failed:
            detail += f", [red]{self._failed} failed[/]"
        self._progress.update(self._task, detail=detail)


def open_display(stream: TextIO, *, title: str, total: int) -> Display:
    """A live display when ``stream`` is a terminal, a quiet one otherwise."""
    if _is_terminal(stream):
        return LiveDisplay(stream, title=title, total=total)
    return QuietDisplay()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# -- text ------------------------------------------------------------------------------


def short_id(run_id: str) -> str:
    return run_id[:8]


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0.1:
        return f"{seconds:.3f} s"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def format_time(ts: float | None, *, precise: bool = False) -> str:
    """A local wall-clock time; ``precise`` adds milliseconds and drops the date."""
    if ts is None:
        return "-"
    moment = dt.datetime.fromtimestamp(ts)
    if precise:
        return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def run_summary_line(run: RunRecord, steps: Sequence[StepRecord]) -> str:
    """``run 1a2b3c4d succeeded: 50 steps in 0.03 s`` (with the counts that matter if not)."""
    total = len(steps)
    noun = "step" if total == 1 else "steps"
    took = format_seconds(duration(run))
    counts: dict[StepStatus, int] = {}
    for s in steps:
        counts[s.status] = counts.get(s.status, 0) + 1
    if counts.get(StepStatus.SUCCEEDED, 0) == total:
        detail = f"{total} {noun}"
    else:
        parts = [f"{n} {status}" for status, n in counts.items() if n]
        detail = f"{', '.join(parts)} of {total} {noun}"
    return f"run {short_id(run.run_id)} {run.status}: {detail} in {took}"


def step_failure_lines(steps: Iterable[StepRecord]) -> list[str]:
    """``step 'x' failed after 3 attempts: ValueError: boom`` for each failed step."""
    lines = []
    for s in steps:
        if s.status is not StepStatus.FAILED:
            continue
        attempts = f"{s.attempts} attempt" + ("" if s.attempts == 1 else "s")
        error = _one_line(str(s.error)) if s.error is not None else "no error recorded"
        lines.append(f"step {s.key!r} failed after {attempts}: {error}")
    return lines


def runs_table(runs: Sequence[RunRecord], positions: Mapping[str, int] | None = None) -> str:
    """``runs list``: a run not started yet shows as ``queued #N``, its place in the queue
    (``positions``)."""
    positions = positions or {}
    rows = [
        [
            r.run_id,
            r.pipeline,
            f"queued #{positions[r.run_id]}" if r.run_id in positions else str(r.status),
            format_time(r.created_at),
            format_seconds(duration(r)),
        ]
        for r in runs
    ]
    return table(["RUN ID", "PIPELINE", "STATUS", "CREATED", "DURATION"], rows)


def _parent(run: RunRecord) -> str:
    if run.parent_step is not None:
        return f"{run.parent} (its step {run.parent_step!r} runs this child run)"
    return f"{run.parent} (this run reruns it)"


def run_details(
    run: RunRecord,
    steps: Sequence[StepRecord],
    result: str | None = None,
    notes: Mapping[str, str] | None = None,
) -> str:
    """The header of a run and a table of its steps, for ``runs show``.

    ``result`` is the run's result as JSON text, if it has one; it is clipped to a line.
    ``notes`` say more about some steps (by key), where they have no error to show.
    """
    notes = notes or {}
    header = [
        ("run", run.run_id),
        ("pipeline", run.pipeline),
        ("status", str(run.status)),
        ("priority", str(run.priority)),
        *([("parent", _parent(run))] if run.parent is not None else []),
        *(
            [("tags", ", ".join(f"{k}={v}" for k, v in sorted(run.tags.items())))]
            if run.tags
            else []
        ),
        ("params", json.dumps(run.params, default=repr) if run.params else "-"),
        ("created", format_time(run.created_at)),
        ("started", format_time(run.started_at)),
        ("finished", format_time(run.finished_at)),
        ("duration", format_seconds(duration(run))),
    ]
    if result is not None:
        header.append(("result", _clip(result, 200)))
    if run.error:
        header.append(("error", _one_line(run.error)))
    width = max(len(label) for label, _ in header)
    lines = [f"{label + ':':<{width + 1}} {value}" for label, value in header]
    notes = notes or {}
    rows = [
        [
            s.key,
            str(s.status),
            str(s.attempts),
            _clip(_one_line(str(s.error)), 80) if s.error is not None else notes.get(s.key, ""),
        ]
        for s in steps
    ]
    headers = ["STEP", "STATUS", "ATTEMPTS", "ERROR"]
    if notes:
        headers.append("NOTE")
        for row, s in zip(rows, steps, strict=True):
            row.append(_clip(_one_line(notes.get(s.key, "")), 80))
    lines += ["", table(headers, rows)]
    return "\n".join(lines)


def deliveries_table(deliveries: Sequence[WebhookDelivery]) -> str:
    """The webhook deliveries of a run, for ``runs show``."""
    rows = [
        [
            redact(d.url),
            d.event,
            str(d.status),
            str(d.attempts),
            _delivery_outcome(d),
        ]
        for d in deliveries
    ]
    return table(["WEBHOOK", "EVENT", "STATUS", "ATTEMPTS", "LAST ATTEMPT"], rows)


def delivery_line(delivery: WebhookDelivery) -> str:
    """``12:00:02.100  webhook_delivered  -  #1  https://hooks.example/x  HTTP 204`` for
    ``runs logs``: where a delivery stands, at the time of its last change."""
    ts = delivery.finished_at or (delivery.next_at if delivery.attempts else delivery.created_at)
    return "  ".join(
        [
            format_time(ts, precise=True),
            f"{'webhook_' + str(delivery.status):<15}",
            f"{delivery.event:<20}",
            f"#{delivery.attempts}" if delivery.attempts else "- ",
            redact(delivery.url),
            _delivery_outcome(delivery),
        ]
    ).rstrip()


def _delivery_outcome(delivery: WebhookDelivery) -> str:
    parts = []
    if delivery.last_status is not None:
        parts.append(f"HTTP {delivery.last_status}")
    if delivery.last_error and not delivery.last_error.startswith("HTTP "):
        parts.append(delivery.last_error)
    elif delivery.last_error:
        parts = [delivery.last_error]
    if delivery.status is DeliveryStatus.PENDING and delivery.attempts:
        parts.append(f"next try {format_time(delivery.next_at, precise=True)}")
    return _clip(_one_line(" ".join(parts)), 100)


def event_line(event: Event) -> str:
    """``12:00:01.250  step_failed  render  #2  ValueError: boom`` for ``runs logs``.

    What a step printed is one line per line it printed (``stdout`` or ``stderr`` in the
    kind's column), and a log record ``INFO logger: message``; their lines are shown as
    they are (a traceback keeps its lines)."""
    data = event.data
    if event.kind is EventKind.STEP_OUTPUT:
        lines = data.get("lines")
        stream = str(data.get("stream", "stdout"))
        texts = [str(line) for line in lines] if isinstance(lines, list) else [str(lines)]
        return "\n".join(_event_prefix(event, stream) + text for text in texts).rstrip()
    if event.kind is EventKind.STEP_LOG:
        text = f"{data.get('level', '')} {data.get('logger', '')}: {data.get('message', '')}"
        return (_event_prefix(event, "log") + text).rstrip()
    if event.kind is EventKind.STEP_EVENT:
        text = f"{data.get('name', '')} {_field(data.get('data'))}"
        return (_event_prefix(event, "event") + text).rstrip()
    return (_event_prefix(event, str(event.kind)) + event_message(event)).rstrip()


def _event_prefix(event: Event, kind: str) -> str:
    return "  ".join(
        [
            format_time(event.ts, precise=True),
            f"{kind:<15}",
            f"{event.step or '-':<20}",
            f"#{event.attempt}" if event.attempt else "- ",
            "",
        ]
    )


def event_message(event: Event) -> str:
    """The human part of an event's data: its error, message, progress, or its fields."""
    data = event.data
    parts: list[str] = []
    error = data.get("error")
    if isinstance(error, dict):
        parts.append(str(ErrorInfo.from_dict(error)))
    elif error:
        parts.append(str(error))
    fraction = data.get("fraction")
    if isinstance(fraction, int | float) and not isinstance(fraction, bool):
        parts.append(f"{fraction:.0%}")
    message = data.get("message")
    if message:
        parts.append(str(message))
    rest = {k: v for k, v in data.items() if k not in _SHOWN_APART}
    parts += [f"{k}={_field(v)}" for k, v in rest.items()]
    return _one_line(" ".join(parts))


# Fields an event line shows on their own, or not at all (the line has its own time).
_SHOWN_APART = frozenset({"error", "fraction", "message", "started_at"})


def _field(value: Any) -> str:
    if isinstance(value, str) and value and not any(c.isspace() for c in value):
        return value
    return json.dumps(value, ensure_ascii=False, default=repr)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def dump_json(value: Any) -> str:
    """Compact one-line JSON; non-ASCII text kept as it is."""
    return json.dumps(value, ensure_ascii=False)
