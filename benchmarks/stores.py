"""The store's cost over RabbitMQ: PostgreSQL beside SQLite, and a 10,000-step footprint.

    python -m benchmarks.stores [--broker URL] [--postgres URL] [--repeat 5]

Runs ``independent_1000`` through the same two worker processes with a coordinator whose
store is SQLite, then PostgreSQL (alternating, ``--repeat`` times each), and prints the
medians and their ratio.  Then runs ``chain_of_chords`` with n=900 (9,902 steps) on a fresh
PostgreSQL database and reports its rows and bytes per table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from aexec.config import Settings
from aexec.executor import Executor
from benchmarks import workloads
from benchmarks.broker import delete_prefixed

ROOT = Path(__file__).resolve().parent.parent


async def _timed(settings: Settings, pipeline: object, **params: object) -> float:
    async with Executor(settings) as ex:
        start = time.perf_counter()
        run = await ex.submit(pipeline, **params)  # type: ignore[arg-type]
        record = await run.wait()
        assert record.status == "succeeded", record.error
        return time.perf_counter() - start


async def _database(server: str, name: str, *, drop: bool = False) -> str:
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        if not drop:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server.rsplit("/", 1)[0] + "/" + name


async def _footprint(dsn: str) -> list[tuple[str, int, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = []
        for table in ("aexec_runs", "aexec_steps", "aexec_events", "aexec_plans"):
            count = await conn.fetchval(f"SELECT count(*) FROM {table}")
            size = await conn.fetchval("SELECT pg_total_relation_size($1)", table)
            rows.append((table, int(count), int(size)))
        return rows
    finally:
        await conn.close()


async def main_async(args: argparse.Namespace) -> None:
    prefix = f"bench-stores-{uuid.uuid4().hex[:8]}"
    broker = f"{args.broker}?prefix={prefix}"
    env = {**os.environ, "AEXEC_BROKER": broker}
    workers = [
        subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
            [
                sys.executable,
                "-m",
                "aexec",
                "worker",
                "start",
                "-A",
                str(ROOT / "benchmarks" / "workloads.py"),
                "-n",
                f"{prefix}-w{i}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in (1, 2)
    ]
    database = f"aexec_bench_{uuid.uuid4().hex[:8]}"
    try:
        await asyncio.sleep(3)  # the workers load and start consuming
        home = tempfile.mkdtemp()
        pg = await _database(args.postgres, database)
        sqlite = Settings(broker=broker, store=f"sqlite:///{home}/a.db", objects=f"file://{home}/o")
        postgres = Settings(broker=broker, store=pg, objects=f"file://{home}/o")
        await _timed(sqlite, workloads.independent)  # warm up both
        await _timed(postgres, workloads.independent)
        times: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
        for _ in range(args.repeat):
            times["sqlite"].append(await _timed(sqlite, workloads.independent))
            times["postgresql"].append(await _timed(postgres, workloads.independent))
        print(f"independent_1000 over RabbitMQ, 2 workers, {args.repeat} repetitions each:")
        for name, values in times.items():
            print(
                f"  {name:10s} median {statistics.median(values):.3f} s "
                f"({min(values):.3f}-{max(values):.3f})"
            )
        ratio = statistics.median(times["postgresql"]) / statistics.median(times["sqlite"])
        print(f"  postgresql / sqlite time: {ratio:.2f} (target <= 1.15)")

        footprint_db = await _database(args.postgres, database + "_fp")
        settings = Settings(broker=broker, store=footprint_db, objects=f"file://{home}/o")
        seconds = await _timed(settings, workloads.chain_of_chords, n=900)
        print(f"\nfootprint of one 9,902-step run (chain_of_chords n=900, {seconds:.1f} s):")
        total = 0
        for table, count, size in await _footprint(footprint_db):
            total += size
            print(f"  {table:13s} {count:7d} rows {size / 1024:9.0f} KiB")
        print(f"  total         {total / 1024 / 1024:.1f} MiB, {total / 9902:.0f} bytes per step")
        await _database(args.postgres, database + "_fp", drop=True)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)
        await _database(args.postgres, database, drop=True)
        await delete_prefixed(args.broker, prefix)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stores")
    parser.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--repeat", type=int, default=5)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
