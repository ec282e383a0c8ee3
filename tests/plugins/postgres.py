"""PostgreSQL fixtures: a fresh database per test, cloned from a migrated template.

The server is ``AEXEC_TEST_POSTGRES_URL`` or ``postgresql://postgres@127.0.0.1:5432/postgres``
(a role that may create databases).  When it cannot be reached, tests skip locally and fail
under ``CI=true``.

``postgres_template`` (session) migrates a randomly named template database once;
``postgres_dsn`` gives each test a clone of it (``CREATE DATABASE ... TEMPLATE``) and
``postgres_empty_dsn`` an empty database; all are dropped afterwards, even when a test left
connections open.

``private_postgres_ssl`` (session) is a private cluster of the session's own
(:mod:`benchmarks.faults.postgres`) that serves SSL with a certificate the session's test CA
signed (``tls_files``) and refuses TCP connections without SSL.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit
from uuid import uuid4

import asyncpg
import pytest

from aexec.store.postgres import PostgresStore
from benchmarks.faults.postgres import (
    ClusterSsl,
    ClusterUnavailable,
    PrivatePostgres,
    start_cluster,
    stop_cluster,
)
from tests.plugins.tls import TlsFiles

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ADMIN_TIMEOUT = 30.0  # seconds for one CREATE or DROP DATABASE


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The maintenance database URL of the test server."""
    from tests.plugins.services import port_open, service_unavailable  # late: for ``-p``

    url = os.environ.get("AEXEC_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 5432
    if not port_open(host, port):
        service_unavailable(f"PostgreSQL is not reachable at {host}:{port}")
    return url


@pytest.fixture(scope="session")
def postgres_template(postgres_url: str) -> Iterator[str]:
    """The name of a database every migration has been applied to, for cloning."""
    name = random_name("aexec_tpl")

    async def create() -> None:
        await create_database(postgres_url, name)
        async with PostgresStore(database_url(postgres_url, name)):
            pass

    asyncio.run(create())
    try:
        yield name
    finally:
        asyncio.run(drop_database(postgres_url, name))


@pytest.fixture
async def postgres_dsn(postgres_url: str, postgres_template: str) -> AsyncIterator[str]:
    """The URL of a fresh, migrated database of this test's own."""
    name = random_name("aexec_test")
    await create_database(postgres_url, name, template=postgres_template)
    try:
        yield database_url(postgres_url, name)
    finally:
        await drop_database(postgres_url, name)


@pytest.fixture
async def postgres_empty_dsn(postgres_url: str) -> AsyncIterator[str]:
    """The URL of a fresh database with no aexec schema (for migration tests)."""
    name = random_name("aexec_test")
    await create_database(postgres_url, name)
    try:
        yield database_url(postgres_url, name)
    finally:
        await drop_database(postgres_url, name)


@pytest.fixture(scope="session")
def private_postgres_ssl(tls_files: TlsFiles) -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of the session's own that serves SSL only (trust auth)."""
    from tests.plugins.services import service_unavailable

    base = Path(tempfile.mkdtemp(prefix="aexec-postgres-ssl-"))
    try:
        try:
            cluster = start_cluster(base, ssl=ClusterSsl(tls_files.cert, tls_files.key))
        except ClusterUnavailable as exc:
            service_unavailable(str(exc))
            return
        try:
            yield cluster
        finally:
            stop_cluster(cluster)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def random_name(prefix: str) -> str:
    return f"{prefix}_{uuid4().hex[:12]}"


def database_url(server_url: str, name: str) -> str:
    """``server_url`` naming database ``name`` instead."""
    return urlsplit(server_url)._replace(path=f"/{name}").geturl()


def with_address(url: str, host: str, port: int) -> str:
    """``url`` with its host and port replaced (to go through a proxy), credentials kept."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    address = f"{host}:{port}"
    return parts._replace(netloc=f"{credentials}@{address}" if credentials else address).geturl()


async def create_database(server_url: str, name: str, *, template: str = "template0") -> None:
    conn = await asyncpg.connect(server_url, timeout=ADMIN_TIMEOUT)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"', timeout=ADMIN_TIMEOUT)
    finally:
        await conn.close()


async def drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url, timeout=ADMIN_TIMEOUT)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', timeout=ADMIN_TIMEOUT)
    finally:
        await conn.close()
