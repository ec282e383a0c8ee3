"""Names and limits of the broker topology that coordinators, workers and clients share.

The messages that travel on these queues and topics are in :mod:`aexec.messages`.  Every
name here is relative: the transport puts its queue prefix (``AEXEC_QUEUE_PREFIX``, by
default ``aexec``) in front of it, so ``step_queue("gpu")`` is ``aexec.step.gpu`` on RabbitMQ.
"""

from __future__ import annotations

MAX_PRIORITY = 10
"""Priorities run 0..MAX_PRIORITY: a run's, a step's, and their sum on a step message
(clamped); every step queue is declared with it as ``x-max-priority``."""

STEP_QUEUE_PREFIX = "step."
"""Step queues are named after the ``queue`` a step is declared with, behind this prefix."""

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


def step_queue(queue: str) -> str:
    """The transport queue that carries the messages of steps declared with ``queue``."""
    return STEP_QUEUE_PREFIX + queue


__all__ = [
    "CONTROL_TOPIC",
    "COORDINATOR_TOPIC",
    "MAX_PRIORITY",
    "RETAINED_MAX_AGE",
    "RETAINED_MAX_BYTES",
    "RETAINED_SEGMENT_BYTES",
    "RUNS_ENDED_TOPIC",
    "STEP_QUEUE_PREFIX",
    "SUBMIT_QUEUE",
    "step_queue",
]
