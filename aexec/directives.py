"""What a step may return instead of an output: decisions for the coordinator.

``return aexec.skip("no new files")`` skips the step and, through it, the steps that
depend on it (those that accept missing inputs run, with None in its place).  The run
does not fail.  ``return aexec.again(after=60, reason="ceph not healthy yet")`` runs the
step again in 60 s, the coordinator keeping the timer (no worker waits).

A directive is an ordinary value to the codec (extension ``EXT_DIRECTIVE``), so it travels
as any output does — from a thread, a child process or another code base — and the
coordinator tells it apart (:func:`aexec.codec.directive_of`) before recording the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MAX_REASON = 1000
"""A directive keeps at most this many characters of its reason."""


@dataclass(frozen=True, slots=True)
class Skip:
    """Skip this step and its dependents (see :func:`skip`)."""

    reason: str = ""

    def to_wire(self) -> list[Any]:
        return ["skip", self.reason]


@dataclass(frozen=True, slots=True)
class Cached:
    """A worker found this attempt's ``output`` (encoded) in the step cache and did not
    run the step (:mod:`aexec.cache`)."""

    output: bytes

    def to_wire(self) -> list[Any]:
        return ["cached", self.output]


@dataclass(frozen=True, slots=True)
class Again:
    """Run this step again in ``after`` seconds (see :func:`again`)."""

    after: float
    reason: str = ""

    def to_wire(self) -> list[Any]:
        return ["again", [self.after, self.reason]]


Directive = Skip | Cached | Again


def again(after: float, reason: str = "") -> Again:
    """Return this from a step to have it run again in ``after`` seconds, saying why (a
    poll of something not ready yet), without holding a worker meanwhile: the coordinator
    keeps the timer.  ``@step(max_wait=...)`` bounds how long a step may keep asking."""
    if not _seconds(after):
        raise ValueError(f"aexec.again(after): a number of seconds >= 0, not {after!r}")
    if not isinstance(reason, str):
        raise TypeError(f"aexec.again(reason=): a string, not {reason!r}")
    return Again(float(after), reason[:MAX_REASON])


def _seconds(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def skip(reason: str = "") -> Skip:
    """Return this from a step to skip it and its dependents, saying why."""
    if not isinstance(reason, str):
        raise TypeError(f"aexec.skip(reason): reason must be a string, not {reason!r}")
    return Skip(reason[:MAX_REASON])


def from_wire(value: Any) -> Directive:
    """The directive that :meth:`to_wire` gave ``value``; ValueError if malformed."""
    if isinstance(value, list) and len(value) == 2:
        kind, field = value
        if kind == "skip" and isinstance(field, str):
            return Skip(field[:MAX_REASON])
        if kind == "cached" and isinstance(field, bytes):
            return Cached(field)
        if kind == "again" and isinstance(field, list) and len(field) == 2:
            after, reason = field
            if _seconds(after) and isinstance(reason, str):
                return Again(float(after), reason[:MAX_REASON])
    raise ValueError(f"malformed directive {value!r:.80}")


__all__ = ["Again", "Cached", "Directive", "Skip", "again", "from_wire", "skip"]
