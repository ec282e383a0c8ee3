"""The event log: every state change of a run is an :class:`Event`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EventKind(StrEnum):
    RUN_SUBMITTED = "run_submitted"
    RUN_QUEUED = "run_queued"  # waits for admission (max_concurrent_runs, run limits)
    RUN_STARTED = "run_started"
    RUN_RESUMED = "run_resumed"  # another coordinator took the run over
    RUN_SUCCEEDED = "run_succeeded"
    RUN_FAILED = "run_failed"
    RUN_CANCELLED = "run_cancelled"
    STEP_DISPATCHED = "step_dispatched"
    STEP_STARTED = "step_started"
    STEP_PROGRESS = "step_progress"
    STEP_LOG = "step_log"  # a log record of the step's code (aexec.telemetry)
    STEP_OUTPUT = "step_output"  # lines the step wrote to stdout or stderr
    STEP_EVENT = "step_event"  # aexec.current().emit(name, data)
    STEP_OUTPUT_DROPPED = "step_output_dropped"  # output past a limit, counted
    STEP_RETRYING = "step_retrying"
    STEP_SUCCEEDED = "step_succeeded"
    STEP_FAILED = "step_failed"
    STEP_SKIPPED = "step_skipped"
    STEP_CANCELLED = "step_cancelled"
    STEP_EXPANDED = "step_expanded"  # a map became one step per item of its list
    STEP_WAITING = "step_waiting"  # a step asked to run again later (aexec.again)
    MESSAGE_REJECTED = "message_rejected"  # a message naming the run failed its signature

    @property
    def ends_run(self) -> bool:
        return self in (EventKind.RUN_SUCCEEDED, EventKind.RUN_FAILED, EventKind.RUN_CANCELLED)


@dataclass(slots=True)
class Event:
    """One entry of a run's event log.

    ``data`` is small and JSON-compatible (messages, error records, progress fractions).
    ``output`` is the encoded step output (or run result) for ``step_succeeded`` and
    ``run_succeeded``: stores keep it with the step or run, not in the log.
    ``seq`` is assigned by the store: increasing within a run.
    """

    kind: EventKind
    run_id: str
    ts: float
    step: str | None = None
    attempt: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    output: bytes | None = None
    seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "run_id": self.run_id,
            "kind": str(self.kind),
            "step": self.step,
            "attempt": self.attempt,
            "data": self.data,
        }


def to_record(event: Event) -> list[Any]:
    """The wire form of an event: ``[seq, ts, kind, step, attempt, data, output]``."""
    return [
        event.seq,
        event.ts,
        str(event.kind),
        event.step,
        event.attempt,
        event.data,
        event.output,
    ]


def from_record(run_id: str, record: list[Any]) -> Event:
    """Inverse of :func:`to_record`; raises ValueError for a malformed record."""
    seq, ts, kind, step, attempt, data, output = record
    if not isinstance(data, dict) or (output is not None and not isinstance(output, bytes)):
        raise ValueError("malformed event record")
    return Event(EventKind(kind), run_id, float(ts), step, int(attempt), data, output, int(seq))
