"""The step context: what a running step can ask for through :func:`current`.

A step's context lives in a context variable: an async step's task has it, and a sync
step's thread has it for as long as the step runs (:func:`run_with`).  Whatever finds the
context there — ``aexec.current()``, the worker's capture of log records and of
stdout/stderr (:mod:`aexec.capture`) — attributes what it sees to that attempt, however
many steps run at once on the worker.

:func:`bind_attempt` names the attempt a worker task is about (outside the step's code),
so that the worker's own log lines carry its run id, step key and attempt too.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any, Protocol

from aexec.errors import AexecError

_CURRENT: contextvars.ContextVar[StepContext] = contextvars.ContextVar("aexec_step_context")
_ATTEMPT: contextvars.ContextVar[tuple[str, str, int] | None] = contextvars.ContextVar(
    "aexec_attempt", default=None
)


class StepOutput(Protocol):
    """Where a running attempt's progress, log records, output lines and custom events go.

    Every method may be called from any thread, never blocks on I/O and never raises:
    telemetry must not fail or stall the step (what cannot be kept is dropped, with a
    marker)."""

    def progress(self, fraction: float | None, message: str | None) -> None: ...

    def log(self, record: logging.LogRecord) -> None: ...

    def write(self, stream: str, text: str) -> None: ...

    def emit(self, name: str, data: Any) -> None: ...


class Discard:
    """A :class:`StepOutput` that keeps nothing (a step run outside a worker)."""

    __slots__ = ()

    def progress(self, fraction: float | None, message: str | None) -> None:
        return None

    def log(self, record: logging.LogRecord) -> None:
        return None

    def write(self, stream: str, text: str) -> None:
        return None

    def emit(self, name: str, data: Any) -> None:
        return None


DISCARD = Discard()


class StepContext:
    """Run id, step key, attempt, a logger, progress reporting, custom events and
    cancellation of one attempt.

    Every method may be called from async steps and from sync steps (which run in
    threads); ``output`` receives what the step reports.
    """

    __slots__ = (
        "_base",
        "_cancelled",
        "_logger",
        "attempt",
        "name",
        "output",
        "run_id",
        "step_key",
    )

    def __init__(
        self,
        run_id: str,
        step_key: str,
        attempt: int,
        name: str,
        output: StepOutput = DISCARD,
        logger: logging.Logger | None = None,
    ) -> None:
        self.run_id = run_id
        self.step_key = step_key
        self.attempt = attempt
        self.name = name
        self.output = output
        self._cancelled = False
        self._base = logger
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """The step's logger (``aexec.step.<name>``), its records tagged with the run id,
        step key and attempt; made on first use (most steps never log)."""
        if self._logger is None:
            base = self._base or logging.getLogger(f"aexec.step.{self.name}")
            self._logger = logging.LoggerAdapter(
                base, {"run_id": self.run_id, "step_key": self.step_key, "attempt": self.attempt}
            )
        return self._logger

    def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """Report progress: ``fraction`` in [0, 1], and/or a short message (recorded as a
        ``step_progress`` event; reports closer together than the worker's flush interval
        keep the latest)."""
        if fraction is not None:
            fraction = float(fraction)
            fraction = min(1.0, max(0.0, fraction)) if fraction == fraction else None  # NaN
        self.output.progress(fraction, None if message is None else str(message))

    def emit(self, name: str, data: Any = None) -> None:
        """Record a custom ``step_event`` named ``name`` with ``data`` (JSON-like: dicts,
        lists, strings, numbers, booleans, None; anything else is kept as its ``repr``)."""
        self.output.emit(str(name), data)

    def heartbeat(self) -> None:
        """Tell the coordinator this attempt is alive.  The worker reports every attempt it
        runs each heartbeat interval, from its own task, so this is never needed; it is
        kept for steps written against older versions."""

    @property
    def cancelled(self) -> bool:
        """True once the attempt has been cancelled (timeout, run cancelled, worker stopping)."""
        return self._cancelled

    def cancel(self) -> None:
        self._cancelled = True

    def __repr__(self) -> str:
        return f"<StepContext run={self.run_id} step={self.step_key} attempt={self.attempt}>"


def current() -> StepContext:
    """The context of the step running in this task or thread."""
    ctx = _CURRENT.get(None)
    if ctx is None:
        raise AexecError("aexec.current() is only available inside a running step")
    return ctx


def running() -> StepContext | None:
    """The context of the step running in this task or thread, or None."""
    return _CURRENT.get(None)


def bind(ctx: StepContext) -> contextvars.Token[StepContext]:
    return _CURRENT.set(ctx)


def unbind(token: contextvars.Token[StepContext]) -> None:
    _CURRENT.reset(token)


def bind_attempt(run_id: str, step_key: str, attempt: int) -> None:
    """Name the attempt the current task works on (for the worker's own log lines); set in
    a task of its own, it ends with the task."""
    _ATTEMPT.set((run_id, step_key, attempt))


def attempt_label() -> tuple[str, str, int] | None:
    """``(run id, step key, attempt)`` of the step running here, or of the attempt the
    current task works on; None elsewhere."""
    ctx = _CURRENT.get(None)
    if ctx is not None:
        return ctx.run_id, ctx.step_key, ctx.attempt
    return _ATTEMPT.get()


def run_with(ctx: StepContext, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` with ``ctx`` current (for sync steps in a worker thread)."""
    token = _CURRENT.set(ctx)
    try:
        return fn(*args, **kwargs)
    finally:
        _CURRENT.reset(token)
