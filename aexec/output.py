"""A worker's buffer of what its running steps report: progress, log records, output lines
and custom events, sent to each coordinator in one :class:`~aexec.messages.Output` message
per flush, never one per line.

Each attempt gets an :class:`AttemptOutput` (the :class:`~aexec.context.StepOutput` of its
step context).  Its methods take a lock, append to the attempt's pending entries and
return: they never wait on I/O and never raise, whichever thread calls them.  Output lines
are cut at newlines (a partial line waits for the rest, or for the attempt's end) and
consecutive lines of one stream share an entry; progress reports keep the latest per flush.

Bounds, counted in bytes of text (:class:`OutputLimits`): an attempt holds at most
``attempt_pending`` between flushes and sends at most ``attempt_total`` in all; the worker
holds at most ``pending``.  What does not fit is dropped and counted, and the next flush
carries a ``dropped`` entry saying how much and why.  Memory stays bounded however much a
step prints.

The first entry after a flush wakes the worker (``wake(False)``, called at most once per
flush, from whichever thread), which flushes ``flush_interval`` seconds later: a worker
whose steps report nothing does no work for it.  An attempt (or the worker) half-way to
its bound between flushes asks for a flush at once (``wake(True)``, once per flush): a step
printing 10,000 lines as fast as it can has them sent in a few messages, not dropped.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aexec import messages
from aexec.telemetry import MAX_TEXT, clip_text, plain, size_of

log = logging.getLogger(__name__)

AttemptKey = tuple[str, str, int]

ENTRY_OVERHEAD = 48
"""Bytes an entry costs besides its text (ids, timestamp, kind)."""


def _level(value: int | str) -> int:
    if isinstance(value, int):
        return value
    level = logging.getLevelName(value.upper())
    if not isinstance(level, int):
        raise ValueError(f"unknown log level {value!r}")
    return level


@dataclass(frozen=True, slots=True)
class OutputLimits:
    """How a worker collects its steps' output.  Sizes in bytes, durations in seconds.

    ``level`` is the lowest level of the log records recorded; ``flush_interval`` the
    longest an entry waits before it is sent."""

    level: int = logging.INFO
    flush_interval: float = 0.25
    pending: int = 1 << 20
    attempt_pending: int = 256 * 1024
    attempt_total: int = 8 << 20
    capture_streams: bool = True

    @classmethod
    def with_level(cls, level: int | str, **overrides: Any) -> OutputLimits:
        return cls(level=_level(level), **overrides)


@dataclass(slots=True, eq=False)
class _Pending:
    """One attempt's entries waiting for the next flush, and what it dropped since."""

    reply_to: str
    entries: list[list[Any]] = field(default_factory=list)
    size: int = 0
    sent: int = 0  # bytes sent in earlier flushes
    progress: list[Any] | None = None
    partial: dict[str, str] = field(default_factory=dict)
    dropped: int = 0
    dropped_bytes: int = 0
    reason: str = ""


class OutputBuffer:
    """The pending output of one worker's attempts; ``wake`` asks for a flush."""

    def __init__(self, limits: OutputLimits, wake: Callable[[bool], None]) -> None:
        self.limits = limits
        self._wake = wake
        self._lock = threading.Lock()
        self._attempts: dict[AttemptKey, _Pending] = {}
        self._size = 0
        self._armed = False
        self._urged = False

    def attempt(self, msg: messages.StepMessage) -> AttemptOutput:
        """The output of ``msg``'s attempt: collected until :meth:`finish`."""
        return self.open((msg.run_id, msg.step_key, msg.attempt), msg.reply_to)

    def open(self, key: AttemptKey, reply_to: str) -> AttemptOutput:
        """The output of attempt ``key``, for ``reply_to``: collected until :meth:`finish`
        (nothing is kept for it until it reports something)."""
        return AttemptOutput(self, key, reply_to)

    @property
    def pending(self) -> int:
        """Bytes waiting to be sent."""
        return self._size

    def take(self) -> dict[str, list[list[Any]]]:
        """Everything pending, by reply queue; the next entry wakes the worker again."""
        now = time.time()
        out: dict[str, list[list[Any]]] = {}
        with self._lock:
            self._armed = self._urged = False
            for key, pending in self._attempts.items():
                entries = self._drain(key, pending, now)
                if entries:
                    out.setdefault(pending.reply_to, []).extend(entries)
        return out

    def finish(self, owner: AttemptOutput) -> tuple[str, list[list[Any]]]:
        """The attempt of ``owner`` ended: its reply queue and its last entries (partial
        lines included); it collects nothing more (again: nothing more to say)."""
        key = owner.key
        with self._lock:
            owner.closed = True
            pending = self._attempts.pop(key, None)
            if pending is None:
                return owner.reply_to, []
            now = time.time()
            for stream, rest in pending.partial.items():
                if rest:
                    self._add_lines(key, pending, stream, [rest], now)
            pending.partial.clear()
            return pending.reply_to, self._drain(key, pending, now)

    def _drain(self, key: AttemptKey, pending: _Pending, now: float) -> list[list[Any]]:
        entries = pending.entries
        if pending.progress is not None:
            entries.append(pending.progress)
            pending.progress = None
        if pending.dropped:
            data = {
                "entries": pending.dropped,
                "bytes": pending.dropped_bytes,
                "reason": pending.reason,
            }
            entries.append([*key, now, "dropped", data])
            pending.dropped = pending.dropped_bytes = 0
        self._size -= pending.size
        pending.sent += pending.size
        pending.size = 0
        pending.entries = []
        return entries

    # -- adding (under the lock) --------------------------------------------------------

    def _pending(self, owner: AttemptOutput) -> _Pending | None:
        """``owner``'s pending entries, made on its first report; None once it ended (a
        thread it left behind writing)."""
        if owner.closed:
            return None
        pending = self._attempts.get(owner.key)
        if pending is None:
            pending = self._attempts[owner.key] = _Pending(owner.reply_to)
            owner.reported = True
        return pending

    def _admit(self, pending: _Pending, size: int) -> bool:
        """Room for ``size`` more bytes of ``pending``'s attempt?  Else it is counted as
        dropped, with why."""
        limits = self.limits
        if pending.sent + pending.size + size > limits.attempt_total:
            reason = f"the attempt wrote more than {limits.attempt_total} bytes of output in all"
        elif pending.size + size > limits.attempt_pending:
            reason = (
                f"the attempt wrote more than {limits.attempt_pending} bytes of output "
                f"within {limits.flush_interval:g} s"
            )
        elif self._size + size > limits.pending:
            reason = f"the worker held {limits.pending} bytes of output waiting to be sent"
        else:
            pending.size += size
            self._size += size
            return True
        pending.dropped += 1
        pending.dropped_bytes += size
        pending.reason = reason
        return False

    def add(self, owner: AttemptOutput, kind: str, data: dict[str, Any], size: int) -> None:
        wake: bool | None = None
        with self._lock:
            pending = self._pending(owner)
            if pending is None:
                return
            if self._admit(pending, size + ENTRY_OVERHEAD):
                pending.entries.append([*owner.key, time.time(), kind, data])
            wake = self._arm(pending)
        if wake is not None:
            self._wake(wake)

    def extend(self, owner: AttemptOutput, entries: list[list[Any]]) -> None:
        """Entries collected elsewhere (a child process) for attempt ``key``, within its
        bounds; its progress keeps the latest, its markers' counts add up."""
        wake: bool | None = None
        with self._lock:
            pending = self._pending(owner)
            if pending is None:
                return
            for entry in entries:
                kind, data = entry[4], entry[5]
                if kind == "progress":
                    pending.progress = entry
                elif kind == "dropped":
                    pending.dropped += _count(data.get("entries"))
                    pending.dropped_bytes += _count(data.get("bytes"))
                    pending.reason = clip_text(data.get("reason", ""), 500)
                elif self._admit(pending, size_of(data) + ENTRY_OVERHEAD):
                    pending.entries.append(entry)
            wake = self._arm(pending)
        if wake is not None:
            self._wake(wake)

    def progress(self, owner: AttemptOutput, data: dict[str, Any]) -> None:
        wake: bool | None = None
        with self._lock:
            pending = self._pending(owner)
            if pending is None:
                return
            pending.progress = [*owner.key, time.time(), "progress", data]
            wake = self._arm(pending)
        if wake is not None:
            self._wake(wake)

    def write(self, owner: AttemptOutput, stream: str, text: str) -> None:
        wake: bool | None = None
        with self._lock:
            pending = self._pending(owner)
            if pending is None:
                return
            text = pending.partial.pop(stream, "") + text
            if "\n" not in text:
                if len(text) <= MAX_TEXT:
                    pending.partial[stream] = text
                    return
                lines = [text]  # a very long line without an end: sent as it is
            else:
                lines = text.split("\n")
                rest = lines.pop()
                if rest:
                    pending.partial[stream] = rest
            self._add_lines(owner.key, pending, stream, lines, time.time())
            wake = self._arm(pending)
        if wake is not None:
            self._wake(wake)

    def _add_lines(
        self, key: AttemptKey, pending: _Pending, stream: str, lines: list[str], now: float
    ) -> None:
        entries = pending.entries
        last = entries[-1] if entries else None
        target: list[str] | None = last[5]["lines"] if last and last[4] == stream else None
        for line in lines:
            if len(line) > MAX_TEXT:
                line = clip_text(line)
            if not self._admit(pending, len(line) + 4):
                continue
            if target is None:
                target = []
                entries.append([*key, now, stream, {"lines": target}])
                pending.size += ENTRY_OVERHEAD
                self._size += ENTRY_OVERHEAD
            target.append(line)

    def _arm(self, pending: _Pending) -> bool | None:
        """Whether the caller wakes the worker (outside the lock): False for the first entry
        since the last flush (flush in a while), True once ``pending``'s attempt or the
        worker is half-way to its bound (flush now), else None."""
        limits = self.limits
        if not self._urged and (
            pending.size * 2 >= limits.attempt_pending or self._size * 2 >= limits.pending
        ):
            self._urged = self._armed = True
            return True
        if self._armed:
            return None
        self._armed = True
        return False


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def encode_output(worker: str, instance: str, entries: list[list[Any]]) -> bytes | None:
    """The :class:`~aexec.messages.Output` message of ``entries``; text that msgpack
    refuses (a lone surrogate) is escaped first; None if it still cannot be encoded."""
    message = messages.Output(worker, instance, time.time(), entries)
    try:
        return message.encode()
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        pass
    message.entries = [[*entry[:5], plain(entry[5])] for entry in entries]
    try:
        return message.encode()
    except (TypeError, ValueError) as exc:
        log.warning("worker %s dropped output it cannot encode: %s", worker, exc)
        return None


class AttemptOutput:
    """The :class:`~aexec.context.StepOutput` of one attempt: what it reports goes to its
    worker's :class:`OutputBuffer`.  Never raises, never blocks on I/O."""

    __slots__ = ("_buffer", "closed", "key", "reply_to", "reported")

    def __init__(self, buffer: OutputBuffer, key: AttemptKey, reply_to: str) -> None:
        self._buffer = buffer
        self.key = key
        self.reply_to = reply_to
        self.closed = False  # set by the buffer, under its lock
        self.reported = False  # it reported something (set by the buffer, under its lock)

    def finish(self) -> tuple[str, list[list[Any]]]:
        """The attempt ended: its reply queue and its last entries (see
        :meth:`OutputBuffer.finish`)."""
        return self._buffer.finish(self)

    def progress(self, fraction: float | None, message: str | None) -> None:
        data: dict[str, Any] = {}
        if fraction is not None:
            data["fraction"] = fraction
        if message is not None:
            data["message"] = clip_text(message)
        if data:
            self._buffer.progress(self, data)

    def log(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # bad %-arguments: logging would print a traceback of its own
            message = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        message = clip_text(message)
        data = {"level": record.levelname, "logger": record.name, "message": message}
        self._buffer.add(self, "log", data, len(message) + len(record.name) + 16)

    def write(self, stream: str, text: str) -> None:
        if text:
            self._buffer.write(self, stream, text)

    def extend(self, entries: list[list[Any]]) -> None:
        """Entries of this attempt collected in a child process."""
        self._buffer.extend(self, entries)

    def emit(self, name: str, data: Any) -> None:
        try:
            value = plain(data)
        except RecursionError:
            value = "<data nested too deep>"
        size = size_of(value)
        if size > 64 * 1024:
            value = {"dropped": f"event data of about {size} bytes, over the 65536-byte limit"}
            size = 100
        entry = {"name": clip_text(name, 200), "data": value}
        self._buffer.add(self, "event", entry, size + len(name))


__all__ = ["AttemptOutput", "OutputBuffer", "OutputLimits", "encode_output"]
