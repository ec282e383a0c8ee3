"""The store port: runs, steps with their attempts, and the event log.

Adapters: :mod:`aexec.store.memory`, :mod:`aexec.store.sqlite` (embedded mode) and, later,
PostgreSQL.  All pass ``tests/contract/test_store.py``.

Writes go through :meth:`Store.append`: one call is one transaction (group commit), and the
store applies each event to the run and step rows it concerns:

======================  =====================================================
event                   row change
======================  =====================================================
run_started             run → running, started_at
step_dispatched         step → queued, attempts = attempt
step_started            step → running, started_at, worker (if that attempt is current)
step_retrying           step → retrying, error
step_succeeded          step → succeeded, output, finished_at
step_failed             step → failed, error, finished_at
step_skipped            step → skipped
step_cancelled          step → cancelled
run_succeeded           run → succeeded, result (the event's output), finished_at
run_failed / cancelled  run → failed / cancelled, error, finished_at
======================  =====================================================

Step transitions are compare-and-set on the attempt: an event for an attempt older than
the step's current one changes no row (it is still logged).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aexec.events import Event
from aexec.plan import Plan
from aexec.types import ErrorInfo, RunStatus, StepStatus


@dataclass(slots=True)
class RunRecord:
    run_id: str
    pipeline: str
    plan_digest: str
    status: RunStatus = RunStatus.PENDING
    priority: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    result: bytes | None = None
    error: str | None = None


@dataclass(slots=True)
class StepRecord:
    run_id: str
    key: str
    name: str
    queue: str
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    error: ErrorInfo | None = None
    output: bytes | None = None


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create_run(self, run: RunRecord, plan: Plan) -> None:
        """Record a new run, its pending steps, and its plan (stored once per digest)."""

    async def append(self, events: Sequence[Event]) -> None:
        """Log ``events`` and apply them to run and step rows, in one transaction."""

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run with this id, or with this unique id prefix; None if there is none."""

    async def list_runs(
        self, *, limit: int = 50, status: RunStatus | None = None
    ) -> list[RunRecord]:
        """Most recent first."""

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        """In plan order."""

    async def get_events(
        self, run_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[Event]:
        """Events with ``seq > after``, oldest first."""

    async def get_plan(self, digest: str) -> Plan | None: ...
