"""Logging helpers: the CLI installs handlers; library code only calls ``getLogger``.

:class:`StepContextFilter` stamps each record with the run id, step key and attempt of
the step running in the current task or thread (``-`` outside a step), so a handler's
format can say ``%(run_id)s %(step_key)s %(attempt)s``.

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
        ctx = context._CURRENT.get(None)
        if ctx is None:
            record.run_id = record.step_key = "-"
            record.attempt = 0
            record.step_context = ""
        else:
            record.run_id, record.step_key, record.attempt = ctx.run_id, ctx.step_key, ctx.attempt
            record.step_context = f" [{ctx.run_id[:8]} {ctx.step_key}#{ctx.attempt}]"
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


def configure(level: int) -> None:
    """Log to stderr at ``level`` with the step context in every line (CLI and workers)."""
    handler = logging.StreamHandler()
    handler.addFilter(StepContextFilter())
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
