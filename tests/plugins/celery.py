"""Celery fixtures: unchanged Celery worker processes (``celery -A tests.celery.tasks
worker``, from PyPI's celery) on the real RabbitMQ, reporting over ``rpc://`` or Redis.

Each worker consumes a queue under a prefix of its own (``<prefix>.tasks``); the queues
and exchanges under the prefix are deleted at the end.  Redis is ``AEXEC_TEST_REDIS_URL``
or ``redis://127.0.0.1:6379/0``: absent, its tests skip locally and fail under CI.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit
from uuid import uuid4

import pytest

from tests.plugins.rabbitmq import delete_queues, list_entities
from tests.plugins.services import port_open, service_unavailable

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class CeleryProcess:
    """One ``celery worker`` process; its output goes to ``log``."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._ready = threading.Event()
        self._lines: list[str] = []
        self._heard = threading.Condition()
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its pool children go with it on kill()
        )
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,))
        self._reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        with open(self.log, "ab") as out:
            for line in stream:
                out.write(line)
                out.flush()
                if b" ready." in line:
                    self._ready.set()
                with self._heard:
                    self._lines.append(line.decode(errors="replace"))
                    self._heard.notify_all()

    def wait_for(self, text: str, timeout: float = 30.0) -> bool:
        """Block until the worker printed a line holding ``text`` (False after ``timeout``)."""
        with self._heard:
            return self._heard.wait_for(lambda: any(text in x for x in self._lines), timeout)

    def wait_ready(self) -> None:
        if not self._ready.wait(READY_TIMEOUT) or self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            self.stop()
            pytest.fail(f"the Celery worker did not start:\n{tail}")

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once, as the OOM killer would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        self._close()

    def _close(self) -> None:
        self._reader.join(30)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)
        self._close()


@dataclass
class CeleryWorkers:
    """Celery workers on ``broker`` reporting to ``backend``, consuming ``queue``."""

    broker: str
    backend: str
    prefix: str
    folder: Path
    ledger: Path
    processes: list[CeleryProcess] = field(default_factory=list)

    @property
    def queue(self) -> str:
        return f"{self.prefix}.tasks"

    def start(self, name: str, *, concurrency: int = 2, queues: str | None = None) -> CeleryProcess:
        """Start a worker consuming ``queues`` (``-Q``; default :attr:`queue`)."""
        env = dict(os.environ)
        env.update(
            AEXEC_TEST_CELERY_BROKER=self.broker,
            AEXEC_TEST_CELERY_BACKEND=self.backend,
            AEXEC_TEST_CELERY_LEDGER=str(self.ledger),
            AEXEC_TEST_CELERY_QUEUE=self.queue,
            PYTHONPATH=str(ROOT),
        )
        argv = [
            sys.executable, "-m", "celery", "-A", "tests.celery.tasks", "worker",
            "-Q", queues or self.queue, "-c", str(concurrency), "-n", f"{name}-{self.prefix}@%h",
            "--without-gossip", "--without-mingle", "-l", "INFO",
        ]  # fmt: skip
        process = CeleryProcess(argv, env, self.folder / f"{name}.log")
        self.processes.append(process)
        process.wait_ready()
        return process

    def executions(self, name: str) -> list[str]:
        """The ledger's lines of task ``name`` (one per execution)."""
        if not self.ledger.exists():
            return []
        lines = self.ledger.read_text().splitlines()
        return [line for line in lines if line.split(" ", 1)[0] == name]

    def close(self) -> None:
        for process in self.processes:
            process.stop()


def _workers(amqp_url: str, backend: str, folder: Path) -> Iterator[CeleryWorkers]:
    prefix = f"aexec-test-{uuid4().hex[:8]}"
    workers = CeleryWorkers(amqp_url, backend, prefix, folder, folder / "ledger.txt")
    try:
        yield workers
    finally:
        workers.close()

        async def clean() -> None:
            queues = await list_entities(amqp_url, prefix, "list_queues")
            exchanges = await list_entities(amqp_url, prefix, "list_exchanges")
            if queues or exchanges:
                await delete_queues(amqp_url, queues, exchanges=exchanges)

        asyncio.run(clean())


@pytest.fixture(scope="module")
def celery_rpc(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryWorkers]:
    """One Celery worker reporting over ``rpc://`` (more can be started)."""
    for workers in _workers(amqp_url, "rpc://", tmp_path_factory.mktemp("celery-rpc")):
        workers.start("w1")
        yield workers


@pytest.fixture
def celery_private(amqp_url: str, tmp_path: Path) -> Iterator[CeleryWorkers]:
    """Celery workers of this test alone (none started yet), reporting over ``rpc://``."""
    yield from _workers(amqp_url, "rpc://", tmp_path)


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("AEXEC_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    parts = urlsplit(url)
    if not port_open(parts.hostname or "localhost", parts.port or 6379):
        service_unavailable(f"Redis is not reachable at {parts.hostname}:{parts.port}")
    return url


@pytest.fixture(scope="module")
def celery_redis(
    amqp_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryWorkers]:
    """One Celery worker reporting to Redis."""
    for workers in _workers(amqp_url, redis_url, tmp_path_factory.mktemp("celery-redis")):
        workers.start("w1")
        yield workers
