"""Live step output under load: does a step printing 10,000 lines slow the other steps on
its worker, and does the coordinator's memory stay bounded?

    python -m benchmarks.output [--broker URL] [--steps 1000] [--lines 10000]
                                [--repeat 5] [--json FILE]

One ``aexec worker start`` process (``-c 100``) and one ``aexec coordinator`` process over
RabbitMQ, a client in this process (``Settings(remote=True)``).  ``others`` is ``--steps``
independent no-op steps (``independent_1000``).  Each repetition times ``others`` alone,
then ``others`` submitted together with a run whose one step prints ``--lines`` lines on
the same worker (every line recorded, checked in the store), alternating so that drift
hits both alike.  The slowdown is the ratio of the medians, minus one (target: at most
10 %).  Memory: the coordinator's peak RSS (``VmHWM``) after the timed runs, and again after
a step printing ten times as many lines: bounded means it does not grow with the lines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aexec.config import Settings
from aexec.events import EventKind
from aexec.executor import Executor
from aexec.wire import SUBMIT_QUEUE, step_queue
from benchmarks import output_steps
from benchmarks.broker import (
    DEFAULT_BROKER,
    delete_prefixed,
    new_prefix,
    wait_for_consumers,
    with_query,
)
from benchmarks.procs import Child, stop_all

ROOT = Path(__file__).resolve().parent.parent
STEPS_FILE = str(Path(__file__).resolve().parent / "output_steps.py")


async def _lines_recorded(ex: Executor, run_id: str) -> tuple[int, int]:
    """Lines recorded in ``step_output`` events of run ``run_id``, and drop markers."""
    lines = dropped = 0
    after = 0
    while True:
        events = await ex.get_events(run_id, after=after, limit=1000)
        for event in events:
            if event.kind is EventKind.STEP_OUTPUT:
                lines += len(event.data["lines"])
            elif event.kind is EventKind.STEP_OUTPUT_DROPPED:
                dropped += 1
        if len(events) < 1000:
            return lines, dropped
        after = events[-1].seq


async def _time_others(ex: Executor, steps: int) -> float:
    t0 = time.perf_counter()
    run = await ex.submit(output_steps.others, n=steps)
    await run.result()
    return time.perf_counter() - t0


async def _time_with_talker(ex: Executor, steps: int, lines: int) -> tuple[float, str]:
    talker = await ex.submit(output_steps.talker, lines=lines)
    t0 = time.perf_counter()
    run = await ex.submit(output_steps.others, n=steps)
    await run.result()
    seconds = time.perf_counter() - t0
    assert await talker.result() == lines
    return seconds, talker.run_id


async def main(args: argparse.Namespace) -> dict[str, Any]:
    prefix = new_prefix()
    url = with_query(args.broker, prefix=prefix)
    workdir = Path(tempfile.mkdtemp(prefix="aexec-bench-output-"))
    worker = Child(
        "aexec worker",
        [
            sys.executable,
            "-m",
            "aexec",
            "worker",
            "start",
            "-A",
            STEPS_FILE,
            "--broker",
            url,
            "-c",
            "100",
            "-n",
            "bench-output",
            "-v",
        ],
        log_file=workdir / "worker.log",
        ready="worker bench-output ready",
        cwd=str(ROOT),
    )
    coordinator = Child(
        "aexec coordinator",
        [
            sys.executable,
            "-m",
            "aexec",
            "coordinator",
            "--broker",
            url,
            "--store",
            f"sqlite:///{workdir / 'coordinator.db'}",
            "--objects",
            f"file://{workdir / 'objects'}",
        ],
        log_file=workdir / "coordinator.log",
        ready=None,
        cwd=str(ROOT),
    )
    children = [worker, coordinator]
    try:
        await worker.start()
        await coordinator.start()
        await wait_for_consumers(args.broker, f"{prefix}.{SUBMIT_QUEUE}")
        settings = Settings(
            broker=url,
            store=f"sqlite:///{workdir / 'coordinator.db'}",
            objects=f"file://{workdir / 'objects'}",
            remote=True,
        )
        async with Executor(settings) as ex:
            await _time_others(ex, 10)  # warm up: queues declared, code loaded
            await _time_with_talker(ex, 10, 10)
            alone: list[float] = []
            beside: list[float] = []
            recorded: list[tuple[int, int]] = []
            for _ in range(args.repeat):
                alone.append(await _time_others(ex, args.steps))
                seconds, run_id = await _time_with_talker(ex, args.steps, args.lines)
                beside.append(seconds)
                recorded.append(await _lines_recorded(ex, run_id))
            rss_after_timed = coordinator.peak_rss_bytes()
            _, big_run = await _time_with_talker(ex, 10, args.lines * 10)
            big_recorded = await _lines_recorded(ex, big_run)
            rss_after_big = coordinator.peak_rss_bytes()
            worker_rss = worker.peak_rss_bytes()
    finally:
        await stop_all(children)
        await delete_prefixed(args.broker, prefix, [f"{prefix}.{step_queue('default')}"])
    slowdown = statistics.median(beside) / statistics.median(alone) - 1
    mb = 2**20
    return {
        "steps": args.steps,
        "lines": args.lines,
        "repeat": args.repeat,
        "alone_seconds": alone,
        "beside_talker_seconds": beside,
        "alone_median": statistics.median(alone),
        "beside_talker_median": statistics.median(beside),
        "slowdown": slowdown,
        "target_slowdown": 0.10,
        "lines_recorded": [lines for lines, _ in recorded],
        "drop_markers": [dropped for _, dropped in recorded],
        "coordinator_peak_rss_mb": round((rss_after_timed or 0) / mb, 1),
        "coordinator_peak_rss_mb_after_10x_lines": round((rss_after_big or 0) / mb, 1),
        "lines_recorded_10x": big_recorded[0],
        "drop_markers_10x": big_recorded[1],
        "worker_peak_rss_mb": round((worker_rss or 0) / mb, 1),
    }


def _print(result: dict[str, Any]) -> None:
    print(
        f"{result['steps']} no-op steps, alone:            "
        f"median {result['alone_median']:.3f} s  {[round(s, 3) for s in result['alone_seconds']]}"
    )
    print(
        f"beside a step printing {result['lines']} lines: "
        f"median {result['beside_talker_median']:.3f} s  "
        f"{[round(s, 3) for s in result['beside_talker_seconds']]}"
    )
    print(f"slowdown: {result['slowdown']:+.1%} (target: at most +10%)")
    print(
        f"lines recorded per run: {result['lines_recorded']}, "
        f"drop markers: {result['drop_markers']}"
    )
    print(
        f"coordinator peak RSS: {result['coordinator_peak_rss_mb']} MB; after a step printing "
        f"{result['lines'] * 10} lines: {result['coordinator_peak_rss_mb_after_10x_lines']} MB "
        f"({result['lines_recorded_10x']} lines recorded, "
        f"{result['drop_markers_10x']} drop markers)"
    )
    print(f"worker peak RSS: {result['worker_peak_rss_mb']} MB")


def cli() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.output", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--broker", default=DEFAULT_BROKER)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(main(args))
    _print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    cli()
