"""Why the steps of a run that are not running yet wait, from what the store holds (the
run's record, step rows and plan).  Pure: no I/O.

A step waits for:

- ``admission`` — its run is queued (not started) by run admission;
- ``inputs: a, b`` — the upstream steps it takes, not finished yet;
- its limits (``concurrency limit NAME[KEY] (N)``, ``limit NAME``, ``rate limit NAME
  (10/s)``: :func:`aexec.limits.describe`) — its inputs are in and the coordinator holds
  it for one of them (waiting is not logged: it would cost an event per step);
- ``retry backoff`` — its last attempt failed and the next is due later.
"""

from __future__ import annotations

from collections.abc import Sequence

from aexec.limits import describe
from aexec.plan import Plan
from aexec.store import RunRecord, StepRecord
from aexec.types import RunStatus, StepStatus


def waiting_for(run: RunRecord, steps: Sequence[StepRecord], plan: Plan | None) -> dict[str, str]:
    """Step key → why it waits, for each pending or retrying step of an unfinished run."""
    if run.status.finished:
        return {}
    waiting = [s for s in steps if s.status in (StepStatus.PENDING, StepStatus.RETRYING)]
    if not waiting:
        return {}
    if run.status is RunStatus.PENDING:
        return {s.key: "admission" for s in waiting}
    status = {s.key: s.status for s in steps}
    reasons: dict[str, str] = {}
    for s in waiting:
        if s.status is StepStatus.RETRYING:
            reasons[s.key] = "retry backoff"
            continue
        if plan is None or s.key not in plan.index:
            reasons[s.key] = "inputs"
            continue
        step = plan.step(s.key)
        upstream = [plan.steps[d].key for d in step.deps]
        unfinished = [k for k in upstream if not status.get(k, StepStatus.PENDING).finished]
        if unfinished:
            reasons[s.key] = "inputs: " + ", ".join(unfinished)
        elif step.limits is not None:
            reasons[s.key] = describe(step.name, step.limits, step.limits.key)
        else:
            reasons[s.key] = "dispatch"
    return reasons


__all__ = ["waiting_for"]
