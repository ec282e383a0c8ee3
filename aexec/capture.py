"""Capturing what step code logs and prints, attributed to the attempt that did it.

Logging and ``sys.stdout``/``sys.stderr`` belong to the process, so the capture is
installed once per process however many workers run in it (:func:`install` counts its
users; :func:`uninstall` takes it down after the last one):

* :class:`StepLogHandler` on the root logger passes each record at or above its level,
  emitted while a step context is current (:func:`aexec.context.running`), to that
  step's output;
* :class:`StepStream` replaces ``sys.stdout`` and ``sys.stderr``: text written while a
  step context is current goes to that step's output *and* on to the real stream, text
  written elsewhere only to the real stream.

The step context is a context variable, so attribution is right however many steps run
at once: an async step's task and a sync step's thread (:func:`aexec.context.run_with`)
each see their own.  A thread that a step starts itself does not inherit the context
(``threading.Thread`` copies none): what it prints or logs is not attributed to the step,
unless the step runs it in ``contextvars.copy_context()``.  Writes to the file descriptors
themselves (a C extension, a subprocess) bypass ``sys.stdout`` and are not captured.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from aexec import context


class StepLogHandler(logging.Handler):
    """Hands the records of running steps to their output."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.users = 0

    def emit(self, record: logging.LogRecord) -> None:
        ctx = context.running()
        if ctx is None:
            return
        with contextlib.suppress(Exception):  # telemetry never fails the code that logs
            ctx.output.log(record)

    def handleError(self, record: logging.LogRecord) -> None:
        return None


class StepStream(io.TextIOBase):
    """``sys.stdout`` or ``sys.stderr`` (``name``) while steps may run: what a step
    writes goes to its output and to ``real``."""

    def __init__(self, name: str, real: TextIO) -> None:
        super().__init__()
        self.stream_name = name
        self.real = real
        self.users = 0

    def write(self, text: str) -> int:
        ctx = context.running()
        if ctx is not None:
            with contextlib.suppress(Exception):  # telemetry never fails the code that prints
                ctx.output.write(self.stream_name, text)
        return self.real.write(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self.real.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.real.isatty()

    def fileno(self) -> int:
        return self.real.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.real, "encoding", "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.real, "errors", None)

    def __getattr__(self, name: str) -> Any:  # buffer, mode, line_buffering, ...
        return getattr(self.real, name)


def install(level: int, *, streams: bool = True) -> None:
    """Capture step log records at ``level`` and above (the lowest level any user asked
    for), and, with ``streams``, what steps print.  Each call needs an :func:`uninstall`."""
    root = logging.getLogger()
    handler = _handler(root)
    if handler is None:
        handler = StepLogHandler(level)
        root.addHandler(handler)
    handler.setLevel(min(handler.level, level))
    handler.users += 1
    if streams:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is None:
                continue  # no such stream (a daemon, pythonw): nothing to capture
            if not isinstance(stream, StepStream):
                stream = StepStream(name, stream)
                setattr(sys, name, stream)
            stream.users += 1


def uninstall(*, streams: bool = True) -> None:
    """Undo one :func:`install`; the last one restores logging and the streams."""
    root = logging.getLogger()
    handler = _handler(root)
    if handler is not None:
        handler.users -= 1
        if handler.users <= 0:
            root.removeHandler(handler)
    if streams:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if isinstance(stream, StepStream):
                stream.users -= 1
                if stream.users <= 0:
                    setattr(sys, name, stream.real)


@contextlib.contextmanager
def outermost() -> Iterator[None]:
    """Keep capturing what steps print while something replaced ``sys.stdout`` and
    ``sys.stderr`` after :func:`install` (a live progress display that prints through
    a console of its own, never through the stream it replaced)."""
    wrapped: dict[str, TextIO] = {}
    for name in ("stdout", "stderr"):
        current = getattr(sys, name)
        if current is not None and not isinstance(current, StepStream):
            wrapped[name] = current
            setattr(sys, name, StepStream(name, current))
    try:
        yield
    finally:
        for name, inner in wrapped.items():
            current = getattr(sys, name)
            if isinstance(current, StepStream) and current.real is inner:
                setattr(sys, name, inner)


def _handler(root: logging.Logger) -> StepLogHandler | None:
    for handler in root.handlers:
        if isinstance(handler, StepLogHandler):
            return handler
    return None


__all__ = ["StepLogHandler", "StepStream", "install", "outermost", "uninstall"]
