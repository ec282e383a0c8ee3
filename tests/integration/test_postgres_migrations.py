"""PostgreSQL schema migrations: applied in order to an empty database they give the
schema in ``migrations/postgres/schema.sql``; they are applied once, even by two stores
opening a new database at the same time; a database from a newer aexec is refused."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from aexec.errors import StoreError
from aexec.store.postgres import PostgresStore, migrations
from tests.plugins.postgres import create_database, database_url, drop_database, random_name

pytestmark = pytest.mark.postgres

FOLDER = Path(__file__).parents[2] / "aexec" / "store" / "migrations" / "postgres"

# The catalog, described in a form independent of how it was built (the order of columns
# matters: a column a migration adds comes last, and schema.sql must say so).
CATALOG_QUERIES = {
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), coll.collname
        FROM pg_class c
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
        LEFT JOIN pg_collation coll ON coll.oid = a.attcollation
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v', 'm')
        ORDER BY c.relname, a.attnum
    """,
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace
        ORDER BY 1, 2
    """,
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'
        ORDER BY 1, 2
    """,
    "sequences": """
        SELECT sequencename, data_type::text, start_value, increment_by, cycle
        FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1
    """,
    "functions": """
        SELECT proname, pg_get_functiondef(oid) FROM pg_proc
        WHERE pronamespace = 'public'::regnamespace ORDER BY 1, 2
    """,
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger
        WHERE NOT tgisinternal ORDER BY 1, 2
    """,
}


async def catalog(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            what: [tuple(row) for row in await conn.fetch(query)]
            for what, query in CATALOG_QUERIES.items()
        }
    finally:
        await conn.close()


async def versions(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return [row[0] for row in await conn.fetch("SELECT version FROM aexec_migrations")]
    finally:
        await conn.close()


@pytest.fixture
async def schema_file_dsn(postgres_url: str) -> AsyncIterator[str]:
    """A new database built by running ``schema.sql`` as a script."""
    name = random_name("aexec_test")
    await create_database(postgres_url, name)
    try:
        dsn = database_url(postgres_url, name)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute((FOLDER / "schema.sql").read_text(encoding="utf-8"))
        finally:
            await conn.close()
        yield dsn
    finally:
        await drop_database(postgres_url, name)


def test_the_migration_files_are_numbered_from_one() -> None:
    files = sorted(p.name for p in FOLDER.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    assert [m.name for m in migrations()] == files
    assert [m.version for m in migrations()] == list(range(1, len(files) + 1))


async def test_migrating_an_empty_database_gives_the_schema_file(
    postgres_empty_dsn: str, schema_file_dsn: str
) -> None:
    async with PostgresStore(postgres_empty_dsn):
        pass
    migrated, expected = await catalog(postgres_empty_dsn), await catalog(schema_file_dsn)
    for what in CATALOG_QUERIES:
        assert migrated[what] == expected[what], what
    tables = {row[0] for row in migrated["columns"]}
    assert tables == {
        "aexec_migrations",
        "aexec_plans",
        "aexec_runs",
        "aexec_steps",
        "aexec_events",
        "aexec_cancel_requests",
        "aexec_webhooks",
        "aexec_rate_buckets",
        "aexec_limit_slots",
        "aexec_limit_waits",
    }
    assert await versions(postgres_empty_dsn) == [m.version for m in migrations()]


async def test_two_stores_opening_a_new_database_at_once_migrate_it_once(
    postgres_empty_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aexec.store.postgres")
    first, second = PostgresStore(postgres_empty_dsn), PostgresStore(postgres_empty_dsn)
    try:
        async with asyncio.timeout(30):
            await asyncio.gather(first.open(), second.open())
    finally:
        await first.close()
        await second.close()
    applied = [r.getMessage() for r in caplog.records if "applying migration" in r.message]
    assert len(applied) == len(migrations())
    assert await versions(postgres_empty_dsn) == [m.version for m in migrations()]


async def test_reopening_a_migrated_database_changes_nothing(postgres_empty_dsn: str) -> None:
    async with PostgresStore(postgres_empty_dsn):
        pass
    before = await catalog(postgres_empty_dsn), await versions(postgres_empty_dsn)
    async with PostgresStore(postgres_empty_dsn):
        pass
    assert (await catalog(postgres_empty_dsn), await versions(postgres_empty_dsn)) == before


async def test_a_database_from_a_newer_aexec_is_refused(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(
            "INSERT INTO aexec_migrations (version) VALUES ($1)", len(migrations()) + 1
        )
    finally:
        await conn.close()
    store = PostgresStore(postgres_dsn)
    with pytest.raises(StoreError, match="newer"):
        await store.open()
    with pytest.raises(StoreError, match="not open"):
        await store.get_run("run-1")
