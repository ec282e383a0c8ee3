"""Rerun from failure: which steps of a new run take their outputs from the run it reruns.
Pure: no I/O.

A step is reused when it succeeded in the earlier run and would do the same work again:
the same step (name), the same call (its constants and how its inputs go in) and the same
inputs, each of them reused too.  Everything else runs: the steps that failed, were
skipped or cancelled, and their dependents — and any step whose call changed (new
parameters) along with what depends on it.

:func:`reusable` decides, without I/O; :func:`reused_outputs` reads the earlier run
through the store port and asks it.
"""

from __future__ import annotations

from collections.abc import Mapping

from aexec.errors import StoreError
from aexec.plan import Plan
from aexec.store import Store
from aexec.types import StepStatus


def reusable(earlier: Plan, succeeded: Mapping[str, bytes], plan: Plan) -> dict[int, bytes]:
    """The steps of ``plan`` (by index) whose outputs come from the earlier run of plan
    ``earlier``, in which the steps ``succeeded`` (key → encoded output) succeeded."""
    reused: dict[int, bytes] = {}
    for step in plan.steps:  # in dependency order: a step's inputs come first
        output = succeeded.get(step.key)
        before = earlier.index.get(step.key)
        if output is None or before is None:
            continue
        old = earlier.steps[before]
        if (
            old.name == step.name
            and old.call == step.call
            and [earlier.steps[d].key for d in old.deps] == [plan.steps[d].key for d in step.deps]
            and all(d in reused for d in step.deps)
        ):
            reused[step.index] = output
    return reused


async def reused_outputs(store: Store, parent: str, plan: Plan) -> dict[int, bytes]:
    """:func:`reusable` for a rerun of run ``parent`` (in ``store``) as ``plan``."""
    record = await store.get_run(parent)
    earlier = None if record is None else await store.get_plan(record.plan_digest)
    if record is None or earlier is None or record.run_id != parent:
        raise StoreError(f"run {parent!r}, to rerun from its failure, is not in the store")
    steps = await store.get_steps(record.run_id)
    succeeded = {
        s.key: s.output for s in steps if s.status is StepStatus.SUCCEEDED and s.output is not None
    }
    return reusable(earlier, succeeded, plan)


__all__ = ["reusable", "reused_outputs"]
