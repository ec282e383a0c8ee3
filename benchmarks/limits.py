"""Limits benchmarks (issue 9), embedded (memory adapters, in-process worker, no broker).

    python -m benchmarks.limits [--tenants 50] [--steps 200] [--step-ms 0] [--repeat 3]
                                [--by-task N] [--json FILE]
                                [--broker amqp://... [--store memory://|sqlite|URL]]
                                [--variants unlimited,per_tenant_2,global_64]

Workload: one run per tenant, each of ``--steps`` independent steps (no-ops, or each
awaiting ``--step-ms`` milliseconds), all submitted at once, in three variants of the same
step:

- ``unlimited``: no limit (the hot path as it is without limits);
- ``per_tenant_2``: ``@step(concurrency=2, limit_key="tenant")``, 2 running per tenant;
- ``global_64``: ``@step(concurrency=64)``, 64 running in all.

``--variants`` picks others too: ``global_32`` and ``global_100`` are ``global_64`` with
another cap (32 or 100 running in all), which shows what a cap costs by the number of
steps it leaves in flight (``per_tenant_2`` has 100 in flight with 50 tenants).

For each: wall time, steps per second, process CPU per step, and fairness: the spread of
the tenants' completion times (max - min, and as a share of the wall time; the tenants'
runs finish together when they are served in turn).  Reports medians over ``--repeat``
rounds; a ratio to the unlimited case is the median of each round's ratio to the unlimited
round run just before it (under the same load).

Embedded (the default), the CPU is the coordinator's and the in-process worker's together
(the worker's share is the same in every variant, so it dilutes the ratios).  With
``--broker``, the steps run in an ``aexec worker start`` subprocess over RabbitMQ and the
coordinator in this process (memory store, or ``--store``), so the CPU per step is the
coordinator's alone: the issue's measure.  ``--by-task N`` also prints where that CPU went:
the N tasks and callbacks of the loop that took the most in each variant's last round
(:mod:`benchmarks.loopcpu`; it adds two clock reads per handle).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aexec.testing
from aexec import pipeline, step
from aexec.config import Settings
from aexec.dsl import Pipeline, StepDef
from aexec.executor import Executor
from aexec.wire import step_queue
from benchmarks import loopcpu
from benchmarks.broker import delete_prefixed, new_prefix, with_query
from benchmarks.procs import Child, stop_all

ROOT = str(Path(__file__).resolve().parent.parent)

Executors = Callable[[], AbstractAsyncContextManager[Executor]]


async def _work(i: int, ms: float) -> int:
    if ms:
        await asyncio.sleep(ms / 1000)
    return i


@step
async def free(i: int, ms: float = 0.0) -> int:
    return await _work(i, ms)


@step(name="per_tenant", concurrency=2, limit_key="tenant")
async def per_tenant(i: int, ms: float = 0.0) -> int:
    return await _work(i, ms)


@step(name="global_cap", concurrency=64)
async def global_cap(i: int, ms: float = 0.0) -> int:
    return await _work(i, ms)


@step(name="global_cap_32", concurrency=32)
async def global_cap_32(i: int, ms: float = 0.0) -> int:
    return await _work(i, ms)


@step(name="global_cap_100", concurrency=100)
async def global_cap_100(i: int, ms: float = 0.0) -> int:
    return await _work(i, ms)


VARIANTS: dict[str, StepDef[Any, Any]] = {
    "unlimited": free,
    "per_tenant_2": per_tenant,
    "global_64": global_cap,
    "global_32": global_cap_32,
    "global_100": global_cap_100,
}
DEFAULT_VARIANTS = ("unlimited", "per_tenant_2", "global_64")


def tenant_pipeline(
    name: str, work: StepDef[Any, Any], steps: int, step_ms: float = 0.0
) -> Pipeline:
    def body(tenant: str) -> None:
        for i in range(steps):
            if step_ms:
                work.alias(f"s{i}")(i, step_ms)
            else:
                work.alias(f"s{i}")(i)

    body.__name__ = name
    return pipeline(body)


async def one_round(
    variant: str,
    work: StepDef[Any, Any],
    tenants: int,
    steps: int,
    executor: Executors = aexec.testing.executor,
    step_ms: float = 0.0,
) -> dict[str, Any]:
    flow = tenant_pipeline(variant, work, steps, step_ms)
    compiled = [flow.compile(tenant=f"t{t}") for t in range(tenants)]
    async with executor() as ex:
        gc.collect()
        usage0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        runs = [await ex.submit(c) for c in compiled]
        done: list[float] = []

        async def finish(run: Any) -> None:
            await run.result()
            done.append(time.perf_counter() - t0)

        await asyncio.gather(*(finish(r) for r in runs))
        wall, usage = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    user, system = usage.ru_utime - usage0.ru_utime, usage.ru_stime - usage0.ru_stime
    total = tenants * steps
    spread = max(done) - min(done)
    return {
        "wall_s": wall,
        "steps_per_s": total / wall,
        "cpu_us_per_step": (user + system) / total * 1e6,
        "user_us_per_step": user / total * 1e6,
        "system_us_per_step": system / total * 1e6,
        "tenant_spread_s": spread,
        "tenant_spread_share": spread / wall,
        "first_tenant_done_s": min(done),
        "last_tenant_done_s": max(done),
    }


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


@contextlib.asynccontextmanager
async def over_rabbitmq(broker: str, store: str = "memory://") -> AsyncIterator[Executors]:
    """A worker subprocess serving this module's steps over ``broker``; yields a factory
    of executors whose coordinator runs here, on ``store`` (``sqlite``: a new database
    file per round)."""
    prefix = new_prefix()
    url = with_query(broker, prefix=prefix)
    workdir = Path(tempfile.mkdtemp(prefix="aexec-bench-limits-"))
    worker = Child(
        "aexec worker",
        [sys.executable, "-m", "aexec", "worker", "start", "-A", __file__, "--broker", url,
         "-c", "200", "-n", "bench-limits", "-v"],
        log_file=workdir / "worker.log",
        ready="worker bench-limits ready",
        cwd=ROOT,
    )  # fmt: skip
    rounds = itertools.count()

    def executor() -> AbstractAsyncContextManager[Executor]:
        where = store
        if store == "sqlite":
            where = f"sqlite:///{workdir / f'runs-{next(rounds)}.db'}"
        objects = f"file://{workdir / 'objects'}"
        return Executor(Settings(broker=url, store=where, objects=objects))

    try:
        await worker.start()
        yield executor
    finally:
        await stop_all([worker])
        await delete_prefixed(broker, prefix, [f"{prefix}.{step_queue('default')}"])


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        executor: Executors = aexec.testing.executor
        if args.broker:
            executor = await stack.enter_async_context(over_rabbitmq(args.broker, args.store))
        return await measure(args, executor)


async def measure(args: argparse.Namespace, executor: Executors) -> dict[str, Any]:
    variants = {name: VARIANTS[name] for name in args.variants}
    results: dict[str, Any] = {}
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    step_ms = getattr(args, "step_ms", 0.0)
    await one_round("warm-up", free, 2, 10, executor)
    by_task = getattr(args, "by_task", 0)
    tallies: dict[str, loopcpu.Tally] = {}
    for _ in range(args.repeat):  # the variants interleaved: a burst of load hits them all
        for name, work in variants.items():
            with loopcpu.handle_cpu() if by_task else contextlib.nullcontext() as tally:
                rounds[name].append(
                    await one_round(name, work, args.tenants, args.steps, executor, step_ms)
                )
            if tally is not None:
                tallies[name] = tally  # the last round's
    for name in variants:
        results[name] = median_of(rounds[name])
        if name in tallies:
            total = args.tenants * args.steps
            results[name]["by_task_us_per_step"] = {
                task: [seconds / total * 1e6, runs / total]
                for task, seconds, runs in tallies[name].top(by_task)
            }
    # Ratios to the unlimited round of the same repeat (run next to it, under the same
    # load), then their median: steadier than a ratio of medians on a shared machine.
    base = rounds["unlimited"]
    for name in [n for n in variants if n != "unlimited"]:
        pairs = list(zip(rounds[name], base, strict=True))
        results[name]["throughput_vs_unlimited"] = statistics.median(
            r["steps_per_s"] / b["steps_per_s"] for r, b in pairs
        )
        for measure in ("cpu", "user", "system"):
            key = f"{measure}_us_per_step"
            results[name][f"{measure}_vs_unlimited"] = statistics.median(
                _ratio(r[key], b[key]) for r, b in pairs
            )
        results[name]["cpu_vs_unlimited_each"] = [
            round(r["cpu_us_per_step"] / b["cpu_us_per_step"], 3) for r, b in pairs
        ]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.limits", description=__doc__)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument(
        "--step-ms",
        type=float,
        default=0.0,
        help="each step awaits this many milliseconds (default 0: no-op steps)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument(
        "--broker", metavar="URL", help="steps in a worker subprocess over RabbitMQ (amqp://...)"
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        default="memory://",
        help="with --broker, the coordinator's store: memory:// (default), sqlite (a new "
        "file per round) or a postgresql:// URL (runs accumulate in it)",
    )
    parser.add_argument(
        "--by-task",
        type=int,
        default=0,
        metavar="N",
        help="also print, per variant, the N tasks and callbacks of the coordinator's loop "
        "that took the most CPU in its last round (us a step, and runs a step)",
    )
    parser.add_argument(
        "--variants",
        type=_variants,
        default=DEFAULT_VARIANTS,
        help=f"comma-separated, among {', '.join(VARIANTS)} (unlimited is always run: "
        f"the ratios are to it); default {','.join(DEFAULT_VARIANTS)}",
    )
    args = parser.parse_args(argv)
    results = main_async_run(args)
    header = (
        f"{'variant':<14}{'wall s':>8}{'steps/s':>10}{'CPU us/step':>13}{'user':>7}{'sys':>6}"
        f"{'spread s':>10}{'spread %':>10}"
    )
    where = (
        f"over RabbitMQ, coordinator CPU, store {args.store.split(':')[0]}"
        if args.broker
        else "embedded, process CPU"
    )
    work = f"{args.step_ms:g} ms steps" if args.step_ms else "no-op steps"
    print(f"{args.tenants} tenants x {args.steps} {work}, median of {args.repeat} ({where})")
    print(header)
    for name, r in results.items():
        print(
            f"{name:<14}{r['wall_s']:>8.2f}{r['steps_per_s']:>10.0f}{r['cpu_us_per_step']:>13.0f}"
            f"{r['user_us_per_step']:>7.0f}{r['system_us_per_step']:>6.0f}"
            f"{r['tenant_spread_s']:>10.2f}{r['tenant_spread_share'] * 100:>9.1f}%"
        )
    for name in [n for n in results if n != "unlimited"]:
        r = results[name]
        print(
            f"{name}: throughput {r['throughput_vs_unlimited']:.2f}x unlimited, "
            f"CPU per step {r['cpu_vs_unlimited']:.2f}x unlimited (user "
            f"{r['user_vs_unlimited']:.2f}x, system {r['system_vs_unlimited']:.2f}x; "
            f"each round {r['cpu_vs_unlimited_each']})"
        )
    for name, r in results.items():
        if "by_task_us_per_step" in r:
            print(f"{name}, the loop's CPU by task or callback (us a step, runs a step):")
            for task, (us, runs) in r["by_task_us_per_step"].items():
                print(f"  {us:8.1f} {runs:7.3f}  {task}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "tenants": args.tenants,
                    "steps": args.steps,
                    "step_ms": args.step_ms,
                    "results": results,
                },
                fh,
                indent=2,
            )
    return 0


def _ratio(value: float, base: float) -> float:
    """``value / base``; NaN if ``base`` is 0 (a short round's system CPU can be)."""
    return value / base if base else math.nan


def _variants(text: str) -> tuple[str, ...]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variants {unknown}: pick among {list(VARIANTS)}")
    return ("unlimited", *[name for name in dict.fromkeys(names) if name != "unlimited"])


def main_async_run(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
