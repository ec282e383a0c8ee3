"""The campaign as a library user: it submits runs to the coordinator services through
``Executor.from_url(broker=..., remote=True)`` and cancels some of them, as an application
would, and remembers what it asked for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aexec import AexecError, Executor, Run
from benchmarks.faults.model import Cancel, Submission
from benchmarks.faults.workload import BY_NAME, CANCELLABLE, PlannedRun

log = logging.getLogger(__name__)

SUBMIT_TIMEOUT = 10.0  # one submission (a confirmed publish), however the broker is
SUBMIT_ATTEMPTS = 6
CANCEL_TIMEOUT = 10.0


@dataclass(slots=True)
class Submitted:
    planned: PlannedRun
    run: Run
    at: float
    cancel: Cancel | None = None


class Client:
    """Submits the planned runs at their times and cancels runs on demand."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self.submitted: list[Submitted] = []
        self.failed_submits = 0  # submissions that raised (and were tried again)
        self.given_up: list[PlannedRun] = []  # runs never submitted

    async def submit_all(self, plan: list[PlannedRun], t0: float) -> None:
        """Submit every planned run at ``t0 + run.at`` (loop time); a burst goes at once."""
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as group:
            for planned in plan:
                delay = t0 + planned.at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                group.create_task(self.submit(planned))

    async def submit(self, planned: PlannedRun) -> Submitted | None:
        """Submit one run, trying again (a new run) when a submission raises."""
        shape = BY_NAME[planned.shape]
        for _ in range(SUBMIT_ATTEMPTS):
            try:
                async with asyncio.timeout(SUBMIT_TIMEOUT):
                    run = await self._executor.submit(
                        shape.pipeline, priority=planned.priority, **planned.params
                    )
            except (AexecError, TimeoutError) as exc:
                self.failed_submits += 1
                log.info("submitting %s (tag %d) failed: %s", planned.shape, planned.tag, exc)
                await asyncio.sleep(1.0)
                continue
            submitted = Submitted(planned, run, time.time())
            self.submitted.append(submitted)
            return submitted
        self.given_up.append(planned)
        return None

    async def cancel(self, choice: float) -> str | None:
        """Cancel a run still in flight (preferring the long ``gated`` ones), picked by
        ``choice`` in [0, 1); what was done, or None when no run is in flight."""
        waiting = [s for s in self.submitted if s.cancel is None and not s.run.status.finished]
        gated = [s for s in waiting if s.planned.shape == CANCELLABLE]
        candidates = gated or waiting
        if not candidates:
            return None
        target = candidates[int(choice * len(candidates))]
        at = time.time()
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT):
                await target.run.cancel()
            sent = True
        except (AexecError, TimeoutError) as exc:
            log.info("cancelling run %s raised: %s", target.run.run_id, exc)
            sent = False
        target.cancel = Cancel(target.run.run_id, at, sent)
        return f"{target.planned.shape} run {target.run.run_id}" + ("" if sent else " (raised)")

    def submissions(self) -> list[Submission]:
        """What was submitted, each with the status its Run handle shows now."""
        return [
            Submission(s.run.run_id, s.planned.shape, s.planned.tag, s.at, str(s.run.status))
            for s in self.submitted
        ]

    def cancels(self) -> dict[str, Cancel]:
        return {s.cancel.run_id: s.cancel for s in self.submitted if s.cancel is not None}
