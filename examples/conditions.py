"""Conditional branches: a step that skips itself, steps that run only ``when`` a
condition holds (given at the call, or declared with ``@step(when=...)``), and a join
that runs whatever was skipped.

    python -m aexec run examples/conditions.py -p hour=3     # the night: no backup report
    python -m aexec run examples/conditions.py -p hour=14 -p changed='["a.txt"]'

Skipped steps do not fail the run; ``runs show`` lists them as skipped and ``runs logs``
says why.
"""

import aexec
from aexec import pipeline, step


@step
def is_daytime(hour: int) -> bool:
    return 8 <= hour < 20


@step
def changes(changed: list[str]) -> object:
    if not changed:
        return aexec.skip("no file changed")  # skips this step and what depends on it
    return sorted(changed)


@step
def back_up(files: list[str]) -> str:
    return f"backed up {len(files)} file(s)"


@step
def notify_team(hour: int) -> str:
    return f"team notified at {hour}h"


@step(when=is_daytime)  # declared on the step: runs only if is_daytime (above) is true
def page_oncall(hour: int) -> str:
    return f"on-call paged at {hour}h"


@step(accept_missing=True)  # a join: runs with None in place of skipped inputs
def summary(backup: str | None, notice: str | None) -> str:
    return "; ".join(part for part in (backup, notice) if part) or "nothing to do"


@pipeline
def nightly(hour: int = 3, changed: list[str] | None = None) -> object:
    backup = back_up(changes(changed or []))
    notice = notify_team(hour, when=is_daytime(hour))  # runs only if is_daytime is true
    page_oncall(hour)  # its when= is declared: the is_daytime called just above
    return summary(backup, notice)
