"""``sslmode`` in a PostgreSQL store URL, against a private cluster that serves SSL only:
``require`` encrypts, ``verify-full`` with ``sslrootcert=`` checks the server's certificate
and name, a CA that did not sign it is refused, and a URL without SSL is turned away by the
server.  The options go to asyncpg as they are in the URL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import asyncpg
import pytest

from aexec.errors import StoreError
from aexec.store.postgres import PostgresStore
from tests.e2e.cluster import REPO, TIMEOUT, make_env
from tests.plugins.tls import TlsFiles

if TYPE_CHECKING:
    from benchmarks.faults.postgres import PrivatePostgres

pytestmark = pytest.mark.postgres

ARITH = str(REPO / "tests" / "e2e" / "pipelines" / "arith.py")


def url(cluster: PrivatePostgres, **options: str) -> str:
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in options.items())
    return f"{cluster.dsn}?{query}" if query else cluster.dsn


async def uses_ssl(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn, timeout=TIMEOUT)
    try:
        return bool(await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
    finally:
        await conn.close()


@pytest.fixture
async def fresh_database(private_postgres_ssl: PrivatePostgres) -> AsyncIterator[str]:
    """The SSL cluster's ``postgres`` database, emptied of aexec's tables afterwards."""
    yield private_postgres_ssl.dsn
    conn = await asyncpg.connect(url(private_postgres_ssl, sslmode="require"), timeout=TIMEOUT)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS aexec_limit_waits, aexec_limit_slots, aexec_rate_buckets, "
            "aexec_webhooks, "
            "aexec_cancel_requests, aexec_events, "
            "aexec_steps, aexec_runs, aexec_plans, aexec_migrations CASCADE"
        )
    finally:
        await conn.close()


async def store_round_trip(dsn: str) -> None:
    from aexec.plan import StepSpec, build
    from aexec.store import RunRecord

    plan = build("p", [StepSpec("a", "add")])
    async with PostgresStore(dsn) as store:
        await store.create_run(RunRecord("r-ssl", "p", plan.digest, created_at=1.0), plan)
        record = await store.get_run("r-ssl")
        assert record is not None and record.run_id == "r-ssl"


@pytest.mark.parametrize("mode", ["require", "verify-full"])
async def test_a_store_url_with_sslmode_connects_over_ssl(
    private_postgres_ssl: PrivatePostgres, tls_files: TlsFiles, fresh_database: str, mode: str
) -> None:
    options = {"sslmode": mode}
    if mode == "verify-full":
        options["sslrootcert"] = str(tls_files.ca)
    dsn = url(private_postgres_ssl, **options)
    await store_round_trip(dsn)
    assert await uses_ssl(dsn)


async def test_verify_full_refuses_a_server_its_ca_did_not_sign(
    private_postgres_ssl: PrivatePostgres, tls_files: TlsFiles
) -> None:
    dsn = url(private_postgres_ssl, sslmode="verify-full", sslrootcert=str(tls_files.other_ca))
    with pytest.raises(StoreError, match="certificate verify failed") as raised:
        await PostgresStore(dsn, timeout=5.0).open()
    assert "\n" not in str(raised.value)


async def test_the_server_turns_away_a_url_without_ssl(
    private_postgres_ssl: PrivatePostgres,
) -> None:
    with pytest.raises(StoreError, match="no encryption") as raised:
        await PostgresStore(url(private_postgres_ssl, sslmode="disable"), timeout=5.0).open()
    assert "\n" not in str(raised.value)


def test_aexec_run_and_runs_list_use_a_verify_full_store(
    private_postgres_ssl: PrivatePostgres,
    tls_files: TlsFiles,
    fresh_database: str,
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    store = url(private_postgres_ssl, sslmode="verify-full", sslrootcert=str(tls_files.ca))
    env = {**make_env(tmp_path), "AEXEC_STORE": store}

    def aexec(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aexec", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )

    run = aexec("run", ARITH, "-p", "n=4", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["result"] == 14
    listed = aexec("runs", "list", "--json")
    assert [json.loads(line)["run_id"] for line in listed.stdout.splitlines()] == [report["run_id"]]
