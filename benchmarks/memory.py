"""The coordinator's memory: per in-flight step, per finished run, and over waves of runs.

    python -m benchmarks.memory [--runs 200] [--steps 50] [--waves 10] [--json FILE]

One ``aexec coordinator`` subprocess (SQLite store, files for outputs) over the real
RabbitMQ, with its resident set size read from /proc at these moments:

1. **idle**: after one warm-up run went through it, with the workers stopped;
2. **in flight**: ``--runs`` runs of ``--steps`` independent no-op steps submitted while no
   worker consumes, once all their step messages are in the queue: every step is dispatched
   and awaited by the coordinator.  ``(in flight - idle) / steps`` is the memory per
   in-flight step (its run's share included);
3. **after wave k**: workers started, the runs of wave k finished, k = 1 .. ``--waves``,
   read twice: at once (as the last result reaches the client) and ``--settle`` seconds
   later (1 s, as the idle figure is read: the coordinator has gone idle and returned
   what it freed to the system).  ``(after wave 1 - idle) / runs`` is what a finished run
   leaves behind, the high-water mark of the first wave included; ``(after the last wave -
   after the first) / (runs of waves 2..n)`` is what each later run adds; and the last wave
   against the first, settled, says whether memory stays flat (target: within 10%).

It prints one table and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aio_pika

from aexec.config import Settings
from aexec.executor import Executor
from aexec.wire import SUBMIT_QUEUE, step_queue
from benchmarks import workloads
from benchmarks.broker import (
    delete_prefixed,
    new_prefix,
    plain_url,
    wait_for_consumers,
    with_query,
)
from benchmarks.procs import Child, stop_all

ROOT = Path(__file__).resolve().parent.parent
FLAT_TARGET = 0.10


async def queue_depth(url: str, queue: str) -> int:
    connection = await aio_pika.connect(plain_url(url), timeout=5)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0


async def wait_for_depth(url: str, queue: str, depth: int, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while (found := await queue_depth(url, queue)) < depth:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{queue} holds {found} messages, expected {depth}")
        await asyncio.sleep(0.2)


class Bench:
    def __init__(self, broker: str, workdir: Path) -> None:
        self.broker = broker
        self.prefix = f"{new_prefix()}.aexec"
        self.url = with_query(broker, prefix=self.prefix)
        self.workdir = workdir
        self.workers: list[Child] = []

    def coordinator(self) -> Child:
        return Child(
            "aexec coordinator",
            [
                sys.executable,
                "-m",
                "aexec",
                "coordinator",
                "--broker",
                self.url,
                "--store",
                f"sqlite:///{self.workdir / 'coordinator.db'}",
                "--objects",
                f"file://{self.workdir / 'objects'}",
            ],
            log_file=self.workdir / "coordinator.log",
            ready=None,
            cwd=str(ROOT),
        )

    async def start_workers(self, count: int = 2) -> None:
        self.workers = [
            Child(
                f"aexec worker mem-w{k}",
                [
                    sys.executable,
                    "-m",
                    "aexec",
                    "worker",
                    "start",
                    "-A",
                    "benchmarks/workloads.py",
                    "--broker",
                    self.url,
                    "-c",
                    "100",
                    "-n",
                    f"mem-w{k}",
                    "-v",
                ],
                log_file=self.workdir / f"worker-{k}-{time.monotonic_ns()}.log",
                ready=f"worker mem-w{k} ready",
                cwd=str(ROOT),
            )
            for k in range(1, count + 1)
        ]
        await asyncio.gather(*(w.start() for w in self.workers))

    async def stop_workers(self) -> None:
        await stop_all(self.workers)
        self.workers = []


async def measure(
    broker: str, runs: int, steps: int, waves: int, workdir: Path, settle: float = 1.0
) -> dict[str, Any]:
    bench = Bench(broker, workdir)
    coordinator = bench.coordinator()
    await coordinator.start()
    settings = Settings(broker=bench.url, objects=f"file://{workdir / 'client'}", remote=True)
    step_queue_name = f"{bench.prefix}.{step_queue('default')}"
    compiled = workloads.independent.compile(n=steps)

    def rss() -> int:
        found = coordinator.rss_bytes()
        if found is None:
            raise RuntimeError("the coordinator exited (see its log)")
        return found

    async def wave(ex: Executor) -> None:
        submitted = await asyncio.gather(*(ex.submit(compiled) for _ in range(runs)))
        await asyncio.gather(*(run.result() for run in submitted))

    try:
        await wait_for_consumers(broker, f"{bench.prefix}.{SUBMIT_QUEUE}")
        async with Executor(settings) as ex:
            await bench.start_workers()
            await (await ex.submit(workloads.roundtrip)).result()  # warm up
            await bench.stop_workers()
            await asyncio.sleep(1.0)
            idle = rss()
            submitted = await asyncio.gather(*(ex.submit(compiled) for _ in range(runs)))
            await wait_for_depth(broker, step_queue_name, runs * steps)
            in_flight = rss()
            await bench.start_workers()
            await asyncio.gather(*(run.result() for run in submitted))
            at_once, after = [rss()], []
            for k in range(waves):
                if k:
                    await wave(ex)
                    at_once.append(rss())
                await asyncio.sleep(settle)
                after.append(rss())
            peak = coordinator.peak_rss_bytes()
    finally:
        await bench.stop_workers()
        await coordinator.stop()
        await delete_prefixed(broker, bench.prefix)
    return {
        "runs_per_wave": runs,
        "steps_per_run": steps,
        "waves": waves,
        "idle_rss_bytes": idle,
        "in_flight_rss_bytes": in_flight,
        "bytes_per_in_flight_step": round((in_flight - idle) / (runs * steps)),
        "bytes_per_finished_run": round((after[0] - idle) / runs),
        "bytes_kept_per_finished_run": round((after[-1] - after[0]) / (runs * max(waves - 1, 1))),
        "settle_seconds": settle,
        "rss_after_wave_bytes": after,
        "rss_at_wave_end_bytes": at_once,
        "last_wave_over_first": round(after[-1] / after[0] - 1, 4),
        "last_wave_over_first_at_once": round(at_once[-1] / at_once[0] - 1, 4),
        "flat_target": FLAT_TARGET,
        "flat": after[-1] <= after[0] * (1 + FLAT_TARGET),
        "peak_rss_bytes": peak,
    }


def report(found: dict[str, Any]) -> str:
    mib = 2**20
    waves = ", ".join(f"{b / mib:.1f}" for b in found["rss_after_wave_bytes"])
    at_once = ", ".join(f"{b / mib:.1f}" for b in found["rss_at_wave_end_bytes"])
    verdict = "met" if found["flat"] else "NOT met"
    return "\n".join(
        [
            f"coordinator memory: {found['runs_per_wave']} runs x {found['steps_per_run']} steps "
            f"a wave, {found['waves']} waves",
            f"  idle                         {found['idle_rss_bytes'] / mib:8.1f} MiB",
            f"  in flight ({found['runs_per_wave'] * found['steps_per_run']:,} steps)"
            f"{found['in_flight_rss_bytes'] / mib:>{17 - len(str(found['runs_per_wave']))}.1f} MiB",
            f"  per in-flight step           {found['bytes_per_in_flight_step']:8,} bytes",
            f"  per finished run (wave 1)    {found['bytes_per_finished_run']:8,} bytes",
            f"  kept per run, waves 2..{found['waves']}"
            f"{found['bytes_kept_per_finished_run']:>{17 - len(str(found['waves']))},} bytes",
            f"  at each wave's end (MiB)     {at_once}",
            f"  last wave over first         {found['last_wave_over_first_at_once']:+.1%}",
            f"  {found['settle_seconds']:g} s later (MiB)".ljust(31) + waves,
            f"  last wave over first         {found['last_wave_over_first']:+.1%} "
            f"(target within {found['flat_target']:.0%}: {verdict})",
            f"  peak                         {(found['peak_rss_bytes'] or 0) / mib:8.1f} MiB",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
    parser.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--runs", type=int, default=200, help="runs a wave (default 200)")
    parser.add_argument("--steps", type=int, default=50, help="steps a run (default 50)")
    parser.add_argument("--waves", type=int, default=10, help="waves (default 10)")
    parser.add_argument(
        "--settle", type=float, default=1.0, help="seconds after a wave to read RSS again"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aexec-memory-") as tmp:
        found = asyncio.run(
            measure(args.broker, args.runs, args.steps, args.waves, Path(tmp), args.settle)
        )
    print(report(found))
    if args.json is not None:
        args.json.write_text(json.dumps(found, indent=2) + "\n")
    return 0 if found["flat"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
