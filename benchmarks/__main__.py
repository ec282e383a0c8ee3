"""aexec beside the raw aio-pika floor, Celery and Dask, on one RabbitMQ, in one run.

    python -m benchmarks [--quick] [--broker URL] [--json FILE] [--only WORKLOAD]

Starts its own worker processes (and coordinator, for ``many_runs``) for each system in
turn, runs every workload's repetitions, prints a table (median seconds, min-max and steps
per second) and the issue-5 targets, and writes the JSON
``{"machine": {...}, "results": [{"workload", "system", "seconds", "steps",
"repetitions", ...}]}``.  Every queue it declares is named with a random prefix and deleted
at the end.  Celery and Dask are measured when installed (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import broker, machine, table
from benchmarks.runner import run_all
from benchmarks.spec import BY_NAME, SCALE_WORKLOADS, WORKLOADS, Workload
from benchmarks.systems import ROOT, BenchConfig, System
from benchmarks.systems.aexec_system import AexecSystem
from benchmarks.systems.celery_floor import CeleryFloorSystem
from benchmarks.systems.celery_system import CelerySystem
from benchmarks.systems.celery_workers import CeleryWorkersSystem
from benchmarks.systems.dask_system import DaskSystem
from benchmarks.systems.dyrygent_system import DyrygentSystem
from benchmarks.systems.raw import RawSystem

SYSTEMS: dict[str, type[System]] = {
    cls.name: cls
    for cls in (
        AexecSystem,
        RawSystem,
        CelerySystem,
        CeleryWorkersSystem,
        DyrygentSystem,
        CeleryFloorSystem,
        DaskSystem,
    )
}
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "latest.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="aexec beside a raw aio-pika floor, Celery and Dask, on one RabbitMQ.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions (minutes, not tens of minutes)"
    )
    parser.add_argument(
        "--broker",
        default=broker.DEFAULT_BROKER,
        metavar="URL",
        help=f"the RabbitMQ every system uses (default {broker.DEFAULT_BROKER})",
    )
    parser.add_argument(
        "--redis",
        default="redis://127.0.0.1:6379/0",
        metavar="URL",
        help="Celery's result backend (default redis://127.0.0.1:6379/0)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        metavar="FILE",
        help="where to write the results (default benchmarks/results/latest.json)",
    )
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the table")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="WORKLOAD",
        help=f"run only these workloads (repeat or comma-separate): {', '.join(BY_NAME)}",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="add the scale workloads (110,002-step chains, 2,000 concurrent runs): "
        "aexec and the raw floor only, up to 15 minutes a repetition",
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        metavar="LIST",
        help=f"comma-separated, default {','.join(SYSTEMS)}",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--concurrency", type=int, default=100, help="prefetch per worker process (default 100)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        help="cap on one repetition, in seconds (default 120, or 60 with --quick)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="profile aexec (only) into DIR: its coordinator and workers (see profiling.py)",
    )
    parser.add_argument(
        "--profiler",
        choices=("py-spy", "cprofile"),
        default="py-spy",
        help="py-spy samples every process (default); cprofile traces the coordinator",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="aexec with metrics on: every coordinator and worker serves /metrics, scraped "
        "every second (default: off, --metrics-port 0)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def select_workloads(only: Sequence[str], *, scale: bool = False) -> list[Workload]:
    """The workloads named (in table order), else the standard set (plus the scale set with
    ``scale``)."""
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown workload {unknown[0]!r}: choose from {', '.join(BY_NAME)}")
    if names:
        return [w for w in BY_NAME.values() if w.name in names]
    return [*WORKLOADS, *(SCALE_WORKLOADS if scale else ())]


def select_systems(text: str) -> list[type[System]]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown system {unknown[0]!r}: choose from {', '.join(SYSTEMS)}")
    return [SYSTEMS[n] for n in names]


def progress(line: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {line}\n")
    sys.stderr.flush()


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    workloads = select_workloads(args.only, scale=args.scale)
    systems = select_systems("aexec" if args.profile else args.systems)
    if await broker.server_version(args.broker) is None:
        raise SystemExit(f"RabbitMQ is not reachable at {broker.plain_url(args.broker)}")
    prefix = broker.new_prefix()
    timeout = args.timeout or (60.0 if args.quick else 120.0)
    config = BenchConfig(
        broker=broker.plain_url(args.broker),
        prefix=prefix,
        workdir=workdir,
        workers=args.workers,
        concurrency=args.concurrency,
        timeout=timeout,
        redis=args.redis,
        profile_dir=args.profile.absolute() if args.profile else None,
        profiler=args.profiler,
        metrics=args.metrics,
    )
    described = await machine.describe(args.broker, args.redis)
    progress(
        f"{described['cpu_count']} x {described['cpu_model']}, {described['python']}, "
        f"RabbitMQ {described['rabbitmq']}; queue prefix {prefix}; work dir {workdir}"
    )
    try:
        rows, setups = await run_all(
            systems, config, workloads, quick=args.quick, progress=progress
        )
    finally:
        deleted = await broker.delete_prefixed(args.broker, prefix)
        progress(f"deleted {deleted} queues and exchanges named {prefix}.*")
    described["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "machine": described,
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
        "quick": args.quick,
        "config": {
            "worker_processes": args.workers,
            "concurrency": args.concurrency,
            "timeout": timeout,
            "systems": setups,
        },
        "results": rows,
        "targets": table.targets(rows),
    }


def report(document: dict[str, Any]) -> str:
    rows = document["results"]
    lines = [
        f"median seconds (min-max) steps/s; {'quick' if document['quick'] else 'full'} run",
        "",
        table.text_table(rows),
        "",
        "CPU milliseconds per step, over all repetitions: total (c this process - client or "
        "in-process coordinator -, co coordinator process, w workers, mq RabbitMQ, rd Redis)",
        "",
        table.text_table(rows, table.cpu_cell),
        "",
    ]
    lines += table.notes(rows)
    lines += ["", *table.targets_text(document["targets"])]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = None
    workdir = Path(tempfile.mkdtemp(prefix="aexec-bench-"))
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            document = runner.run(run(args, workdir))
    finally:
        if args.keep:
            progress(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(document))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    if args.markdown:
        results = document["results"]
        args.markdown.write_text(
            table.markdown_table(results)
            + "\n\nCPU milliseconds per step:\n\n"
            + table.markdown_table(results, table.cpu_cell)
            + "\n"
        )
    progress(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
