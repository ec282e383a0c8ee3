"""Logging helpers: the CLI installs handlers; library code only calls ``getLogger``.

:class:`StepContextFilter` stamps each record with the run id, step key and attempt of
the step running in the current task or thread, or of the attempt a worker task works on
(``-`` elsewhere), so a handler's format can say ``%(run_id)s %(step_key)s %(attempt)s``.

:class:`RedactingFilter` is the last line of defence for credentials: aexec never logs one
(URLs go through :func:`aexec.redaction.redact`), but libraries below it may log the URL
they were given (aio-pika does, query included, at DEBUG); the filter replaces every
secret it was told of with ``***`` in each record it passes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aexec import context
from aexec.redaction import MASK

MIN_SECRET = 3
"""Shorter values are not hidden: masking every "ab" would garble the log, not protect it."""

FORMAT = "%(asctime)s %(levelname)s %(name)s%(step_context)s: %(message)s"


class StepContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        label = context.attempt_label()
        if label is None:
            record.run_id = record.step_key = "-"
            record.attempt = 0
            record.step_context = ""
        else:
            run_id, step_key, attempt = label
            record.run_id, record.step_key, record.attempt = run_id, step_key, attempt
            record.step_context = f" [{run_id[:8]} {step_key}#{attempt}]"
        return True


class RedactingFilter(logging.Filter):
    """Replace the secrets given to :meth:`hide` with ``***`` in every record's message and
    traceback text."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: list[str] = []

    def hide(self, secrets: Iterable[str]) -> None:
        known = set(self._secrets)
        self._secrets += [s for s in secrets if len(s) >= MIN_SECRET and s not in known]
        self._secrets.sort(key=len, reverse=True)  # a secret inside a longer one goes after

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        clean = self._redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        return True

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


def hide_secrets(secrets: Iterable[str], logger: logging.Logger | None = None) -> None:
    """Tell every :class:`RedactingFilter` on the handlers of ``logger`` (the root logger
    by default) to hide ``secrets``."""
    values = list(secrets)
    for handler in (logger or logging.getLogger()).handlers:
        for found in handler.filters:
            if isinstance(found, RedactingFilter):
                found.hide(values)


def let_through(level: int | str) -> None:
    """Let records from ``level`` on through the root logger, if it stops them now, without
    showing more on its handlers (whose own levels are kept): a worker records its steps'
    log records from that level (:mod:`aexec.capture`) whatever stderr shows."""
    root = logging.getLogger()
    number = level if isinstance(level, int) else logging.getLevelName(level.upper())
    if not isinstance(number, int) or root.level <= number:
        return
    for handler in root.handlers:
        if handler.level == logging.NOTSET:
            handler.setLevel(root.level)
    root.setLevel(number)


def configure(level: int, step_level: int = logging.INFO) -> None:
    """Log to stderr at ``level`` with the step context in every line (CLI and workers).

    The root logger lets records through from ``step_level`` too, if that is lower, so that
    a worker can record its steps' log records (:mod:`aexec.capture`) that stderr does not
    show."""
    handler = logging.StreamHandler()
    handler.setLevel(level)
    handler.addFilter(StepContextFilter())
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(min(level, step_level))
