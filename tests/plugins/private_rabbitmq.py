"""A private RabbitMQ node for destructive fault tests: ``stop_app``/``start_app``,
``close_all_connections`` and broker settings (``consumer_timeout``) that must never be
applied to the RabbitMQ other tests share.

The session-scoped ``private_rabbitmq`` fixture boots a node of its own (``aexec-test-<random>
@localhost``, see :mod:`benchmarks.faults.rabbit`, which the fault campaign uses too) in a
temporary directory, and stops it at the end of the session.  When the node cannot be
started the tests that need it skip with the reason (fail under ``CI=true``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.faults.rabbit import NodeUnavailable, PrivateRabbit, start_node, stop_node
from tests.plugins.services import service_unavailable

__all__ = ["PrivateRabbit", "private_rabbitmq"]


@pytest.fixture(scope="session")
def private_rabbitmq() -> Iterator[PrivateRabbit]:
    """A RabbitMQ node of the test session's own, stopped and deleted at the end."""
    base = Path(tempfile.mkdtemp(prefix="aexec-rabbitmq-"))
    try:
        try:
            rabbit, server = start_node(base)
        except NodeUnavailable as exc:
            service_unavailable(str(exc))
            return
        try:
            yield rabbit
        finally:
            stop_node(rabbit, server)
    finally:
        shutil.rmtree(base, ignore_errors=True)
