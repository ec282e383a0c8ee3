"""A private RabbitMQ node for destructive fault tests: ``stop_app``/``start_app``,
``close_all_connections`` and broker settings (``consumer_timeout``) that must never be
applied to the RabbitMQ other tests share.

The session-scoped ``private_rabbitmq`` fixture boots a node of its own (``aexec-test-<random>
@localhost``, see :mod:`benchmarks.faults.rabbit`, which the fault campaign uses too) in a
temporary directory, and stops it at the end of the session.  When the node cannot be
started the tests that need it skip with the reason (fail under ``CI=true``).

``private_rabbitmq_tls`` is another such node with a TLS listener too (``tls_url``), its
certificate signed by the session's test CA (``tls_files``, :mod:`tests.plugins.tls`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.faults.rabbit import (
    NodeTls,
    NodeUnavailable,
    PrivateRabbit,
    start_node,
    stop_node,
)
from tests.plugins.services import service_unavailable
from tests.plugins.tls import TlsFiles

__all__ = ["PrivateRabbit", "private_rabbitmq", "private_rabbitmq_tls"]


@pytest.fixture(scope="session")
def private_rabbitmq() -> Iterator[PrivateRabbit]:
    """A RabbitMQ node of the test session's own, stopped and deleted at the end."""
    yield from _node(None)


@pytest.fixture(scope="session")
def private_rabbitmq_tls(tls_files: TlsFiles) -> Iterator[PrivateRabbit]:
    """A node of the session's own with a TLS listener (``tls_url``) besides the plain one."""
    yield from _node(NodeTls(tls_files.ca, tls_files.cert, tls_files.key))


def _node(tls: NodeTls | None) -> Iterator[PrivateRabbit]:
    base = Path(tempfile.mkdtemp(prefix="aexec-rabbitmq-"))
    try:
        try:
            rabbit, server = start_node(base, tls=tls)
        except NodeUnavailable as exc:
            service_unavailable(str(exc))
            return
        try:
            yield rabbit
        finally:
            stop_node(rabbit, server)
    finally:
        shutil.rmtree(base, ignore_errors=True)
