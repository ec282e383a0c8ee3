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
"""Broadcast commands for workers: ping, terminate, cancel a run's attempts."""

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
    "STEP_QUEUE_PREFIX",
    "SUBMIT_QUEUE",
    "step_queue",
]
