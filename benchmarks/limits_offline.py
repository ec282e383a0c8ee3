"""The limiter's own bookkeeping per step, offline (issue 9): no broker, no event loop
traffic, no worker.

    python -m benchmarks.limits_offline [--tenants 50] [--steps 200] [--group 14]
                                        [--repeat 5] [--json FILE]

The workload and its variants are :mod:`benchmarks.limits`'s (one run per tenant, each of
``--steps`` independent steps; ``unlimited``, ``per_tenant_2``, ``global_64``).  Here the
coordinator's scheduler passes are driven by hand, as the coordinator drives them: a
:class:`~aexec.batch.Batch` per pass, the slots of caps taken and freed in the memory
store in one ``sync_slots`` call per pass (:class:`~aexec.throttle.Throttle`'s work), and
the steps that pass sent out completed ``--group`` at a time in later passes (the worker's
completions arrive in messages of a few; 14 is about what a capped round over RabbitMQ
sees).  What is timed is the scheduler's and the limiter's work alone: events and steps to
publish are produced but neither recorded nor sent.

So the difference between a capped variant and ``unlimited`` is what the limits cost in
themselves, apart from what the broker and the event loop cost per pass and per message
(which ``benchmarks.limits --broker`` measures with them).  Reports the fastest of
``--repeat`` rounds (the collector paused), in microseconds per step; raises if a step is
lost or a cap is ever exceeded.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import sys
import time
from typing import Any

from aexec import messages
from aexec.batch import ActiveRun, Batch, Outgoing
from aexec.inbox import Start
from aexec.limits import Limiter
from aexec.scheduling import RunState
from aexec.store.memory import MemoryStore
from benchmarks.limits import DEFAULT_VARIANTS, VARIANTS, tenant_pipeline


class Tally:
    """What a round counted: passes, slot takes asked of the store, most steps in flight."""

    def __init__(self) -> None:
        self.passes = 0
        self.takes = 0
        self.most_in_flight = 0
        self.most_per_tenant = 0


async def sync(batch: Batch, store: MemoryStore, tally: Tally) -> None:
    """Take and free in the store the slots ``batch`` decided, as the coordinator's
    throttle does before the pass's steps go out; a refusal is an error here (the
    limiter in front of the store never asks for more than the cap)."""
    takes = batch.wanted_takes()
    frees, batch.slot_frees = batch.slot_frees, []
    if not (takes or frees):
        return
    tally.takes += len(takes)
    granted = await store.sync_slots(frees, [take for take, _ in takes])
    for (take, index), given in zip(takes, granted, strict=True):
        if not given:
            raise RuntimeError(f"the store refused the slots of {take.run_id}/{take.step}")
        batch.slots_taken(take, index, given)
    batch.slot_frees = []  # (slots of whole runs: freed when their ends are recorded)


async def one_round(variant: str, tenants: int, steps: int, group: int) -> tuple[float, Tally]:
    """Drive ``tenants`` runs of ``variant`` to their end; the seconds the passes took."""
    flow = tenant_pipeline(variant, VARIANTS[variant], steps)
    plans = [flow.compile(tenant=f"t{t}").plan for t in range(tenants)]
    runs = {f"r{t}": ActiveRun(f"r{t}", plan, 0, RunState(plan)) for t, plan in enumerate(plans)}
    store, limiter, tally = MemoryStore(), Limiter(), Tally()
    await store.open()
    in_flight: collections.deque[Outgoing] = collections.deque()
    per_run: collections.Counter[str] = collections.Counter()
    limits = plans[0].steps[0].limits  # the variant's step's, as it declares them
    cap = None if limits is None else limits.concurrency
    now = time.time()
    finished = 0

    async def one_pass(fill: Any) -> None:
        nonlocal finished
        batch = Batch(runs, "c1", {}, limiter)
        fill(batch)
        await sync(batch, store, tally)
        tally.passes += 1
        for out in batch.outgoing:
            per_run[out.run.run_id] += 1
        in_flight.extend(batch.outgoing)
        finished += len(batch.finished)

    def start(batch: Batch) -> None:
        for run_id in runs:
            batch.command(Start(run_id))

    def complete(batch: Batch) -> None:
        for _ in range(min(group, len(in_flight))):
            out = in_flight.popleft()
            per_run[out.run.run_id] -= 1
            key = out.run.plan.steps[out.index].key
            batch.completion(
                messages.Completion(out.run.run_id, key, out.attempt, b"\x01", None, "w", now, now)
            )

    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        await one_pass(start)
        while in_flight:
            tally.most_in_flight = max(tally.most_in_flight, len(in_flight))
            tally.most_per_tenant = max(tally.most_per_tenant, max(per_run.values()))
            await one_pass(complete)
        elapsed = time.perf_counter() - t0
    finally:
        gc.enable()
    await store.close()
    if finished != tenants:
        raise RuntimeError(f"{variant}: {tenants - finished} of {tenants} runs did not finish")
    if cap is not None:
        assert limits is not None
        most = tally.most_per_tenant if limits.key_name else tally.most_in_flight
        if most > cap:
            raise RuntimeError(f"{variant}: {most} steps in flight, over the cap of {cap}")
    return elapsed, tally


async def measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    total = args.tenants * args.steps
    await one_round("unlimited", 2, 10, args.group)  # warm-up
    best: dict[str, tuple[float, Tally]] = {}
    for _ in range(args.repeat):  # interleaved, so that a burst of load hits them all
        for variant in DEFAULT_VARIANTS:
            elapsed, tally = await one_round(variant, args.tenants, args.steps, args.group)
            if variant not in best or elapsed < best[variant][0]:
                best[variant] = (elapsed, tally)
    base = best["unlimited"][0] / total * 1e6
    for variant, (elapsed, tally) in best.items():
        us = elapsed / total * 1e6
        results[variant] = {
            "us_per_step": us,
            "over_unlimited_us": us - base,
            "passes_per_step": tally.passes / total,
            "slot_takes_per_step": tally.takes / total,
            "most_in_flight": tally.most_in_flight,
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.limits_offline", description=__doc__
    )
    parser.add_argument("--tenants", type=_positive, default=50)
    parser.add_argument("--steps", type=_positive, default=200)
    parser.add_argument("--group", type=_positive, default=14, help="completions per pass")
    parser.add_argument("--repeat", type=_positive, default=5)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    results = asyncio.run(measure(args))
    print(
        f"{args.tenants} tenants x {args.steps} steps, {args.group} completions per pass, "
        f"fastest of {args.repeat} (scheduler and limiter only)"
    )
    print(
        f"{'variant':<14}{'us/step':>9}{'over unlimited':>16}{'passes/step':>13}{'takes/step':>12}"
    )
    for name, r in results.items():
        print(
            f"{name:<14}{r['us_per_step']:>9.2f}{r['over_unlimited_us']:>+16.2f}"
            f"{r['passes_per_step']:>13.3f}{r['slot_takes_per_step']:>12.2f}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"tenants": args.tenants, "steps": args.steps, "group": args.group,
                       "results": results}, fh, indent=2)  # fmt: skip
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
