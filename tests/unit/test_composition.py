"""Composition from settings: each port builds its adapter from a URL, and each engine
config is derived from Settings in one place."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import aexec.objects
import aexec.store
import aexec.transport
from aexec.config import Settings
from aexec.coordinator import CoordinatorConfig
from aexec.errors import ConfigError
from aexec.objects.fs import FileObjectStore
from aexec.objects.memory import MemoryObjectStore
from aexec.objects.s3 import S3ObjectStore
from aexec.store.memory import MemoryStore
from aexec.store.postgres import PostgresStore
from aexec.store.sqlite import SqliteStore
from aexec.transport.amqp import AmqpTransport
from aexec.transport.memory import MemoryTransport
from aexec.worker import WorkerConfig


@pytest.mark.parametrize(
    ("url", "adapter"),
    [
        ("memory://", MemoryStore),
        ("sqlite:///runs.db", SqliteStore),
        ("postgresql://db.example/runs", PostgresStore),
        ("postgres://db.example/runs", PostgresStore),
    ],
)
def test_the_store_url_chooses_the_store_adapter(url: str, adapter: type) -> None:
    assert type(aexec.store.from_url(url)) is adapter


@pytest.mark.parametrize(
    ("url", "adapter"),
    [
        ("memory://", MemoryObjectStore),
        ("file:///tmp/aexec-objects", FileObjectStore),
        ("s3://bucket/prefix", S3ObjectStore),
    ],
)
def test_the_objects_url_chooses_the_object_store_adapter(url: str, adapter: type) -> None:
    assert type(aexec.objects.from_url(url)) is adapter


@pytest.mark.parametrize(
    ("url", "adapter"),
    [
        (None, MemoryTransport),
        ("memory://", MemoryTransport),
        ("amqp://guest:guest@localhost/", AmqpTransport),
        ("amqps://guest:guest@localhost/", AmqpTransport),
    ],
)
def test_the_broker_url_chooses_the_transport_adapter(url: str | None, adapter: type) -> None:
    assert type(aexec.transport.from_url(url)) is adapter


@pytest.mark.parametrize(
    "build",
    [
        lambda: aexec.store.from_url("mysql://db/runs"),
        lambda: aexec.objects.from_url("ftp://host/dir"),
        lambda: aexec.transport.from_url("redis://localhost"),
    ],
    ids=["store", "objects", "transport"],
)
def test_an_unknown_scheme_is_a_config_error(build: Callable[[], object]) -> None:
    with pytest.raises(ConfigError):
        build()


def test_the_transport_prefix_names_broker_queues_unless_the_url_names_one() -> None:
    given = aexec.transport.from_url("amqp://localhost/", prefix="team")
    assert isinstance(given, AmqpTransport) and given.prefix == "team"
    in_url = aexec.transport.from_url("amqp://localhost/?prefix=url", prefix="team")
    assert isinstance(in_url, AmqpTransport) and in_url.prefix == "url"


def test_the_ports_import_no_adapter_until_one_is_chosen() -> None:
    code = (
        "import sys, aexec.store, aexec.objects, aexec.transport\n"
        "heavy = {'asyncpg', 'aio_pika', 'aioboto3', 'sqlite3'} & set(sys.modules)\n"
        "adapters = [m for m in sys.modules if m.count('.') == 2 and m.startswith(\n"
        "    ('aexec.store.', 'aexec.objects.', 'aexec.transport.'))]\n"
        "print(sorted(heavy), adapters)\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "[] []"


def test_worker_config_takes_its_knobs_from_settings() -> None:
    settings = Settings(
        concurrency=7,
        thread_pool_size=3,
        inline_threshold=10,
        heartbeat_interval=0.5,
        ack_after=2.0,
    )
    config = WorkerConfig.from_settings(settings, name="w", pool="process")
    assert (config.name, config.pool) == ("w", "process")
    assert config.concurrency == 7
    assert config.thread_pool_size == 3
    assert config.inline_threshold == 10
    assert config.heartbeat_interval == 0.5
    assert config.ack_after == 2.0


def test_the_drain_grace_comes_from_the_environment_into_the_worker_config() -> None:
    settings = Settings.resolve(environ={"AEXEC_DRAIN_GRACE": "12.5"})
    assert WorkerConfig.from_settings(settings).drain_grace == 12.5
    assert WorkerConfig.from_settings(Settings()).drain_grace == 60.0
    with pytest.raises(ConfigError, match="drain_grace"):
        Settings(drain_grace=-1.0)


def test_the_coalescing_window_comes_from_the_environment_into_the_worker_config() -> None:
    settings = Settings.resolve(environ={"AEXEC_COALESCE": "0"})
    assert WorkerConfig.from_settings(settings).coalesce == 0.0
    assert WorkerConfig.from_settings(Settings()).coalesce == 0.001
    with pytest.raises(ConfigError, match="coalesce"):
        Settings(coalesce=-1.0)


def test_the_commit_delay_defaults_by_store_and_comes_from_the_environment() -> None:
    def delay(settings: Settings) -> float:
        return CoordinatorConfig.from_settings(settings).commit_delay

    # Deferred commits pay with PostgreSQL's costly commits, not with SQLite's cheap ones.
    assert delay(Settings(store="postgresql://postgres@127.0.0.1/db")) == 0.01
    assert delay(Settings(store="postgres://postgres@127.0.0.1/db")) == 0.01
    assert delay(Settings(store="sqlite:///runs.db")) == 0.0
    assert delay(Settings()) == 0.0  # the embedded default: SQLite
    assert CoordinatorConfig().commit_delay == 0.0
    environ = {"AEXEC_STORE": "sqlite:///runs.db", "AEXEC_COMMIT_DELAY": "0.005"}
    assert delay(Settings.resolve(environ=environ)) == 0.005
    environ = {"AEXEC_STORE": "postgresql://postgres@h/db", "AEXEC_COMMIT_DELAY": "0"}
    assert delay(Settings.resolve(environ=environ)) == 0.0
    with pytest.raises(ConfigError, match="commit_delay"):
        Settings(commit_delay=-1.0)
    with pytest.raises(ConfigError, match="commit_delay"):
        Settings.resolve(environ={"AEXEC_COMMIT_DELAY": "soon"})


def test_the_cancel_grace_comes_from_the_environment_into_the_worker_config() -> None:
    settings = Settings.resolve(environ={"AEXEC_CANCEL_GRACE": "1.5"})
    assert WorkerConfig.from_settings(settings).cancel_grace == 1.5
    assert WorkerConfig.from_settings(Settings()).cancel_grace == 5.0
    with pytest.raises(ConfigError, match="cancel_grace"):
        Settings(cancel_grace=-1.0)


def test_coordinator_config_takes_its_knobs_from_settings() -> None:
    settings = Settings(fail_fast=True, worker_timeout=4.0, lease=9.0)
    config = CoordinatorConfig.from_settings(settings, adopt=True)
    assert config.adopt is True
    assert (config.fail_fast, config.worker_timeout, config.lease) == (True, 4.0, 9.0)


def test_overrides_win_over_settings() -> None:
    settings = Settings(concurrency=7, lease=9.0)
    assert WorkerConfig.from_settings(settings, concurrency=2).concurrency == 2
    assert CoordinatorConfig.from_settings(settings, lease=1.0).lease == 1.0
