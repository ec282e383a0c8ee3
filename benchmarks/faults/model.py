"""What the campaign observed, as plain values: the input of the checker.

Everything here is read back after the fact — runs, steps and events from the store, the
ledger, the processes' fates, the dead letters — so that :mod:`benchmarks.faults.checker`
is a pure function of it, and its unit tests build observations by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from benchmarks.faults.ledger import Execution

FINISHED = frozenset({"succeeded", "failed", "cancelled"})
OUTCOMES = frozenset({"step_succeeded", "step_failed", "step_retrying"})
"""Events that end an attempt: it succeeded, failed for good, or failed (or lost its
worker) and another attempt follows."""


@dataclass(frozen=True, slots=True)
class EventView:
    seq: int
    ts: float
    kind: str
    step: str | None = None
    attempt: int = 0
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepView:
    key: str
    status: str
    attempts: int = 0
    error: str | None = None  # "Type: message" of a failed step


@dataclass(slots=True)
class RunView:
    """A run as the store has it at the end."""

    run_id: str
    pipeline: str
    status: str
    params: Mapping[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    finished_at: float | None = None
    steps: dict[str, StepView] = field(default_factory=dict)  # in plan order
    events: list[EventView] = field(default_factory=list)  # by seq
    deps: dict[str, tuple[str, ...]] = field(default_factory=dict)  # step → its upstreams
    result: Any = None  # the decoded result of a succeeded run
    result_error: str | None = None  # why the result could not be read

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass(frozen=True, slots=True)
class Expected:
    """What a run must end as: ``failing`` are the steps that must fail (a failed run); the
    steps downstream of them must be skipped and every other step must succeed."""

    status: str
    failing: frozenset[str] = frozenset()
    result: Any = None


@dataclass(frozen=True, slots=True)
class Submission:
    """A run the campaign submitted and got an id for (the broker confirmed it)."""

    run_id: str
    pipeline: str
    tag: int
    at: float


@dataclass(frozen=True, slots=True)
class Cancel:
    """The campaign asked for run ``run_id`` to be cancelled at ``at``; ``sent`` is False
    when the request raised (it may or may not have gone out)."""

    run_id: str
    at: float
    sent: bool = True


@dataclass(frozen=True, slots=True)
class ProcessFate:
    """What became of one worker or coordinator process.

    ``how``: ``stopped`` (the final SIGTERM), ``killed`` (SIGKILL, a fault), ``replaced``
    (SIGTERM, a fault: it drains while a new one runs under its name), ``crashed`` (it
    exited on its own after it was ready), ``never-ready`` (it exited, or was stopped,
    before it was ready: e.g. the broker was down when it started).  ``overran``: it had
    not exited ``grace`` seconds after its SIGTERM, and was killed.
    """

    slot: str
    pid: int
    how: str
    started: float
    signalled_at: float | None = None
    ended: float | None = None
    code: int | None = None
    overran: bool = False
    log_file: str = ""


@dataclass(frozen=True, slots=True)
class Poison:
    """A message the campaign published to be refused: ``digest`` is its body's sha256.

    ``consumed`` says whether its queue still had a consumer at the end (a poison left in
    a queue that nobody consumes any more was never looked at).  ``run_id``: a well-formed
    submission whose only fault is its id, which may also become a run and fail."""

    digest: str
    queue: str
    kind: str
    variant: str
    at: float
    consumed: bool = True
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    digest: str
    queue: str  # where it was dead-lettered from
    reason: str
    summary: str  # what it is, as far as it decodes


@dataclass(slots=True)
class Observations:
    runs: dict[str, RunView] = field(default_factory=dict)
    expected: dict[str, Expected] = field(default_factory=dict)
    submissions: list[Submission] = field(default_factory=list)
    cancels: dict[str, Cancel] = field(default_factory=dict)
    executions: list[Execution] = field(default_factory=list)
    duplicated: frozenset[tuple[str, str, int]] = frozenset()
    """(run, step, attempt) whose step message the campaign itself published twice."""
    processes: list[ProcessFate] = field(default_factory=list)
    poison: list[Poison] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    slack: float = 1.0
    """Seconds of clock and delivery slack when comparing a start with a run's end."""


@dataclass(frozen=True, slots=True, order=True)
class Violation:
    kind: str
    subject: str  # a run id, a process, a queue
    detail: str

    def line(self) -> str:
        return f"VIOLATION {self.kind} {self.subject}: {self.detail}"
