"""The step context: what a running step can ask for through :func:`current`."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any

from aexec.errors import AexecError

_CURRENT: contextvars.ContextVar[StepContext] = contextvars.ContextVar("aexec_step_context")

ProgressSink = Callable[[float | None, str | None], None]


class StepContext:
    """Run id, step key, attempt, a logger, progress reporting and cancellation of one attempt.

    ``progress`` and ``heartbeat`` may be called from async steps and from sync steps
    (which run in threads); the sink they call is thread-safe.
    """

    __slots__ = ("_cancelled", "_progress", "attempt", "logger", "name", "run_id", "step_key")

    def __init__(
        self,
        run_id: str,
        step_key: str,
        attempt: int,
        name: str,
        progress: ProgressSink,
        logger: logging.Logger | None = None,
    ) -> None:
        self.run_id = run_id
        self.step_key = step_key
        self.attempt = attempt
        self.name = name
        self._progress = progress
        self._cancelled = False
        base = logger or logging.getLogger(f"aexec.step.{name}")
        self.logger = logging.LoggerAdapter(
            base, {"run_id": run_id, "step_key": step_key, "attempt": attempt}
        )

    def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """Report progress: ``fraction`` in [0, 1], and/or a short message."""
        if fraction is not None:
            fraction = min(1.0, max(0.0, float(fraction)))
        self._progress(fraction, None if message is None else str(message))

    def heartbeat(self) -> None:
        """Tell the coordinator this attempt is alive (long steps in code that never yields)."""
        self._progress(None, None)

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


def bind(ctx: StepContext) -> contextvars.Token[StepContext]:
    return _CURRENT.set(ctx)


def unbind(token: contextvars.Token[StepContext]) -> None:
    _CURRENT.reset(token)


def run_with(ctx: StepContext, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` with ``ctx`` current (for sync steps in a worker thread)."""
    token = _CURRENT.set(ctx)
    try:
        return fn(*args, **kwargs)
    finally:
        _CURRENT.reset(token)
