"""Limits benchmarks (issue 9), embedded (memory adapters, in-process worker, no broker).

    python -m benchmarks.limits [--tenants 50] [--steps 200] [--repeat 3] [--json FILE]

Workload: one run per tenant, each of ``--steps`` independent no-op steps, all submitted
at once, in three variants of the same step:

- ``unlimited``: no limit (the hot path as it is without limits);
- ``per_tenant_2``: ``@step(concurrency=2, limit_key="tenant")``, 2 running per tenant;
- ``global_64``: ``@step(concurrency=64)``, 64 running in all.

For each: wall time, steps per second, process CPU per step (coordinator and in-process
worker together: the worker's share is the same in every variant, so the differences are
the limiter's), and fairness: the spread of the tenants' completion times (max - min, and
as a share of the wall time; the tenants' runs finish together when they are served in
turn).  Reports medians over ``--repeat`` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from typing import Any

import aexec.testing
from aexec import pipeline, step
from aexec.dsl import Pipeline, StepDef


@step
async def free(i: int) -> int:
    return i


@step(name="per_tenant", concurrency=2, limit_key="tenant")
async def per_tenant(i: int) -> int:
    return i


@step(name="global_cap", concurrency=64)
async def global_cap(i: int) -> int:
    return i


def tenant_pipeline(name: str, work: StepDef[Any, Any], steps: int) -> Pipeline:
    def body(tenant: str) -> None:
        for i in range(steps):
            work.alias(f"s{i}")(i)

    body.__name__ = name
    return pipeline(body)


async def one_round(
    variant: str, work: StepDef[Any, Any], tenants: int, steps: int
) -> dict[str, Any]:
    flow = tenant_pipeline(variant, work, steps)
    compiled = [flow.compile(tenant=f"t{t}") for t in range(tenants)]
    async with aexec.testing.executor() as ex:
        gc.collect()
        cpu0, t0 = time.process_time(), time.perf_counter()
        runs = [await ex.submit(c) for c in compiled]
        done: list[float] = []

        async def finish(run: Any) -> None:
            await run.result()
            done.append(time.perf_counter() - t0)

        await asyncio.gather(*(finish(r) for r in runs))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    total = tenants * steps
    spread = max(done) - min(done)
    return {
        "wall_s": wall,
        "steps_per_s": total / wall,
        "cpu_us_per_step": cpu / total * 1e6,
        "tenant_spread_s": spread,
        "tenant_spread_share": spread / wall,
        "first_tenant_done_s": min(done),
        "last_tenant_done_s": max(done),
    }


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    variants = {"unlimited": free, "per_tenant_2": per_tenant, "global_64": global_cap}
    results: dict[str, Any] = {}
    for name, work in variants.items():
        rounds = [await one_round(name, work, args.tenants, args.steps) for _ in range(args.repeat)]
        results[name] = median_of(rounds)
    base = results["unlimited"]
    for name in ("per_tenant_2", "global_64"):
        results[name]["throughput_vs_unlimited"] = (
            results[name]["steps_per_s"] / base["steps_per_s"]
        )
        results[name]["cpu_vs_unlimited"] = (
            results[name]["cpu_us_per_step"] / base["cpu_us_per_step"]
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.limits", description=__doc__)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    results = main_async_run(args)
    header = (
        f"{'variant':<14}{'wall s':>8}{'steps/s':>10}{'CPU us/step':>13}"
        f"{'spread s':>10}{'spread %':>10}"
    )
    print(f"{args.tenants} tenants x {args.steps} steps, median of {args.repeat}")
    print(header)
    for name, r in results.items():
        print(
            f"{name:<14}{r['wall_s']:>8.2f}{r['steps_per_s']:>10.0f}{r['cpu_us_per_step']:>13.0f}"
            f"{r['tenant_spread_s']:>10.2f}{r['tenant_spread_share'] * 100:>9.1f}%"
        )
    for name in ("per_tenant_2", "global_64"):
        r = results[name]
        print(
            f"{name}: throughput {r['throughput_vs_unlimited']:.2f}x unlimited, "
            f"CPU per step {r['cpu_vs_unlimited']:.2f}x unlimited"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {"tenants": args.tenants, "steps": args.steps, "results": results}, fh, indent=2
            )
    return 0


def main_async_run(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
