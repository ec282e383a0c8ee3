"""Logging helpers: the CLI installs handlers; library code only calls ``getLogger``.

:class:`StepContextFilter` stamps each record with the run id, step key and attempt of
the step running in the current task or thread (``-`` outside a step), so a handler's
format can say ``%(run_id)s %(step_key)s %(attempt)s``.
"""

from __future__ import annotations

import logging

from aexec import context

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


def configure(level: int) -> None:
    """Log to stderr at ``level`` with the step context in every line (CLI and workers)."""
    handler = logging.StreamHandler()
    handler.addFilter(StepContextFilter())
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
