from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import Cluster


@pytest.fixture
def cluster(tmp_path: Path, amqp_url: str, amqp_prefix: str) -> Iterator[Cluster]:
    """Processes of one test over RabbitMQ, all killed at its end."""
    home = tmp_path / "home"
    home.mkdir()
    cluster = Cluster(home, amqp_prefix, amqp_url)
    try:
        yield cluster
    finally:
        for process in cluster.processes:
            process.stop()
