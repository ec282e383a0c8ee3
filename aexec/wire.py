"""Names and limits of the broker topology that coordinators, workers and clients share.

The messages that travel on these queues and topics are in :mod:`aexec.messages`.  Every
name here is relative: the transport puts its queue prefix (``AEXEC_QUEUE_PREFIX``, by
default ``aexec``) in front of it, so ``step_queue("gpu")`` is ``aexec.step.gpu`` on RabbitMQ.
"""

from __future__ import annotations

from aexec.errors import CodecError

MAX_PRIORITY = 10
"""Priorities run 0..MAX_PRIORITY: a run's, a step's, and their sum on a step message
(clamped); every step queue is declared with it as ``x-max-priority``."""

STEP_QUEUE_PREFIX = "step."
"""Step queues are named after the ``queue`` a step is declared with, behind this prefix."""

VERSION_MARK = "@"
"""Between a step's name (or queue) and its version, where a version routes it."""


def versioned(name: str, version: str | None) -> str:
    """How a step at ``version`` is addressed: its name in step messages and its queue
    (``reconstruct@2`` on ``repo@2``), so that only workers serving that version take it;
    without a version, the name itself (any worker serving the name takes it)."""
    return name if not version else f"{name}{VERSION_MARK}{version}"


def check_version(version: object) -> str | None:
    """``version`` if it is usable (None, or a non-empty string of letters, digits and
    ``._-+``); else a :class:`~aexec.errors.CodecError` saying why."""
    if version is None:
        return None
    if (
        not isinstance(version, str)
        or not version
        or len(version) > 64
        or not all(c.isalnum() or c in "._-+" for c in version)
    ):
        raise CodecError(
            f"a version is a short string of letters, digits and ._-+, not {version!r:.60}"
        )
    return version


CONTROL_TOPIC = "control"
"""Broadcast commands for workers: ping, terminate."""

RUNS_ENDED_TOPIC = "runs.ended"
"""A retained topic (``Transport.announce`` / ``follow``): every run that ended (cancelled,
succeeded, failed), announced by its coordinator once the end is recorded.  Workers follow
it from start-up, so that they never start a step of a run that has ended, however late
they start or reconnect."""

RETAINED_MAX_AGE = 7 * 24 * 3600.0
"""Seconds a retained announcement is kept (at least; RabbitMQ drops whole segments)."""

RETAINED_MAX_BYTES = 8 * 1024 * 1024
"""Bytes of announcements a retained topic keeps (the oldest go first beyond it)."""

RETAINED_SEGMENT_BYTES = 1024 * 1024
"""Segment size of a retained topic on RabbitMQ: retention drops whole segments."""

SUBMIT_QUEUE = "coordinator.submit"
"""Library clients submit runs here; every coordinator service consumes it."""

COORDINATOR_TOPIC = "coordinators"
"""Broadcast commands for coordinators (cancel a run, wherever it is driven)."""

REQUEST_QUEUE = "coordinator.requests"
"""Requests from clients without a store, as :class:`~aexec.messages.Control` messages:
cancel a run, send a run's events again.  Every coordinator service consumes it
(:mod:`aexec.client_requests`); a request waits here while no coordinator runs."""


MAX_RUN_ID = 255
"""The longest run id, in characters: ids travel in every message, name objects and rows,
and a PostgreSQL ``NOTIFY`` payload (8000 bytes) carries one."""


def check_run_id(run_id: object) -> str:
    """``run_id`` if it is a usable run id: a non-empty string of at most
    :data:`MAX_RUN_ID` characters, none of them a control character; else a
    :class:`~aexec.errors.CodecError` saying why, in one line.  Every run id that comes
    from outside (a submission message, the library, the command line) is checked here."""
    if not isinstance(run_id, str) or not run_id:
        raise CodecError(f"a run id must be a non-empty string, not {run_id!r:.60}")
    if len(run_id) > MAX_RUN_ID:
        raise CodecError(
            f"a run id has at most {MAX_RUN_ID} characters; this one has {len(run_id)} "
            f"({run_id[:20]!r}...)"
        )
    if not run_id.isprintable():
        raise CodecError(f"a run id has no control characters: {run_id!r:.80}")
    return run_id


def step_queue(queue: str) -> str:
    """The transport queue that carries the messages of steps declared with ``queue``."""
    return STEP_QUEUE_PREFIX + queue


def reply_queue(coordinator_id: str) -> str:
    """The queue where workers send the completions, progress and heartbeats of the steps
    coordinator ``coordinator_id`` dispatched (its step messages name it)."""
    return f"reply.{coordinator_id}"


__all__ = [
    "CONTROL_TOPIC",
    "COORDINATOR_TOPIC",
    "MAX_PRIORITY",
    "MAX_RUN_ID",
    "REQUEST_QUEUE",
    "RETAINED_MAX_AGE",
    "RETAINED_MAX_BYTES",
    "RETAINED_SEGMENT_BYTES",
    "RUNS_ENDED_TOPIC",
    "STEP_QUEUE_PREFIX",
    "SUBMIT_QUEUE",
    "VERSION_MARK",
    "check_run_id",
    "check_version",
    "reply_queue",
    "step_queue",
    "versioned",
]
