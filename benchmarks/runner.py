"""Run every workload on every system and collect result rows.

Every system's workers are started first and stay up for the whole run; then, workload by
workload, the systems take turns repetition by repetition (the order rotates), so that a
change in the machine's load during the run hits every system alike rather than whichever
happened to be measured at that moment.  A repetition that exceeds the cap or fails is
recorded with its status (``timeout``/``failed``), that system sits out the rest of the
workload, and it recovers (drops its queued work) before the next one.  A system that is
not installed, or does not run a workload, gets ``skipped`` rows saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import statistics
import traceback
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from benchmarks.cpu import CpuMeter
from benchmarks.spec import BY_NAME, SCALE_TIMEOUT, Workload
from benchmarks.systems import BenchConfig, Sample, System

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
WARM_UP = (("roundtrip", 3), ("parallel_50", 1))


def result_row(
    workload: Workload,
    system: str,
    samples: list[Sample],
    *,
    status: str = "ok",
    note: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    seconds = [s.seconds for s in samples]
    median = statistics.median(seconds) if seconds else None
    row: dict[str, Any] = {
        "workload": workload.name,
        "system": system,
        "seconds": median,
        "min": min(seconds) if seconds else None,
        "max": max(seconds) if seconds else None,
        "steps": workload.steps,
        "repetitions": len(seconds),
        "steps_per_second": workload.steps / median if median else None,
        "status": status,
        "samples": [round(s, 6) for s in seconds],
    }
    if note:
        row["note"] = note
    for sample in samples:  # per-sample extras: keep the largest (e.g. a peak RSS)
        for key, value in sample.extra.items():
            row[key] = max(row.get(key, value), value)
    # CPU time is summed over the repetitions: /proc counts it in 10 ms ticks.
    measured = [s.cpu_seconds for s in samples if s.cpu_seconds]
    if measured:
        steps = workload.steps * len(measured)
        roles = dict.fromkeys(role for m in measured for role in m)
        row["cpu_ms_per_step"] = {
            role: round(1000 * sum(m.get(role, 0.0) for m in measured) / steps, 3) for role in roles
        }
    row.update(extra or {})
    return row


class _Entry:
    """One system's progress through one workload."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.samples: list[Sample] = []
        self.status = "ok"
        self.note: str | None = None
        self.skipped: str | None = None
        self.prepared = False

    @property
    def active(self) -> bool:
        return self.skipped is None and self.status == "ok"


async def run_all(
    classes: Sequence[type[System]],
    config: BenchConfig,
    workloads: Sequence[Workload],
    *,
    quick: bool,
    progress: Progress,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Result rows (workload-major) and each system's description."""
    found: dict[str, dict[str, dict[str, Any]]] = {}  # workload -> system -> row
    described: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    for cls in classes:
        reason = cls.unavailable()
        if reason is not None:
            progress(f"{cls.name}: skipped ({reason})")
            unavailable[cls.name] = reason
    # Embedded workloads first, before any system starts its workers or cluster: each of
    # their samples is a process of its own (benchmarks.isolated), and none should share
    # the machine with the other systems' resident processes either.
    embedded = [w for w in workloads if w.embedded]
    if embedded:
        idle = [cls(config) for cls in classes if cls.name not in unavailable]
        for system in idle:
            described[system.name] = {**system.describe(), "load_average": os.getloadavg()}
        for workload in embedded:
            found[workload.name] = await _run_workload(idle, workload, quick, config, progress)
    others = [w for w in workloads if not w.embedded]
    if others:
        async with contextlib.AsyncExitStack() as stack:
            systems: list[System] = []
            for cls in classes:
                if cls.name not in unavailable:
                    reason = await _start(stack, cls(config), systems, progress)
                    if reason is not None:
                        progress(f"{cls.name}: skipped ({reason})")
                        unavailable[cls.name] = reason
            for system in systems:
                described[system.name] = {**system.describe(), "load_average": os.getloadavg()}
            for workload in others:
                found[workload.name] = await _run_workload(
                    systems, workload, quick, config, progress
                )
    rows: list[dict[str, Any]] = []
    for workload in workloads:
        for cls in classes:
            row = found[workload.name].get(cls.name)
            if row is None:
                note = unavailable[cls.name]
                row = result_row(workload, cls.name, [], status="skipped", note=note)
            rows.append(row)
    return rows, described


async def _start(
    stack: contextlib.AsyncExitStack, system: System, started: list[System], progress: Progress
) -> str | None:
    """Start ``system`` and warm it up; returns why it cannot run, or None."""
    progress(f"{system.name}: starting workers")
    try:
        await stack.enter_async_context(system)
        for name, times in WARM_UP:
            workload = BY_NAME[name]
            await system.prepare(workload, warm_up=True)
            try:
                for _ in range(times):
                    await asyncio.wait_for(system.run(workload), system.config.timeout)
            finally:
                await system.finish()
    except Exception as exc:
        log.debug("system %s failed to start:\n%s", system.name, traceback.format_exc())
        return f"failed to start: {type(exc).__name__}: {_first_line(exc)}"
    started.append(system)
    return None


async def _run_workload(
    systems: Sequence[System],
    workload: Workload,
    quick: bool,
    config: BenchConfig,
    progress: Progress,
) -> dict[str, dict[str, Any]]:
    entries = [_Entry(system) for system in systems]
    for entry in entries:
        entry.skipped = entry.system.supports(workload)
        if entry.active:
            try:
                await entry.system.prepare(workload)
                entry.prepared = True
            except Exception as exc:
                entry.status, entry.note = "failed", f"{type(exc).__name__}: {_first_line(exc)}"
    repetitions = workload.quick_repetitions if quick else workload.repetitions
    for rep in range(repetitions):
        turn = rep % max(len(entries), 1)
        for entry in entries[turn:] + entries[:turn]:
            if entry.active:
                await _one(entry, workload, config, progress)
    found: dict[str, dict[str, Any]] = {}
    for entry in entries:
        name = entry.system.name
        if entry.skipped is not None:
            found[name] = result_row(workload, name, [], status="skipped", note=entry.skipped)
            continue
        extra = await entry.system.finish() if entry.prepared else {}
        if entry.status == "timeout":  # took longer than this: a bound for a speedup
            extra = {**extra, "cap": cap(workload, config)}
        row = result_row(
            workload, name, entry.samples, status=entry.status, note=entry.note, extra=extra
        )
        found[name] = row
        if entry.samples:
            progress(
                f"{name:12s} {workload.name:30s} {row['seconds']:9.4f} s"
                f"  ({row['min']:.4f}-{row['max']:.4f}, n={len(entry.samples)})"
                f"  {row['steps_per_second']:8.0f} steps/s"
            )
    return found


async def _one(entry: _Entry, workload: Workload, config: BenchConfig, progress: Progress) -> None:
    system = entry.system
    meter = CpuMeter(
        system.cpu_roles(),
        broker_port=urlsplit(config.broker).port or 5672,
        redis_port=urlsplit(config.redis).port or 6379,
    )
    before = meter.snapshot()
    try:
        # Systems whose client blocks enforce config.timeout themselves; the margin lets
        # them report it before this (which cannot stop a thread) fires.
        sample = await asyncio.wait_for(system.run(workload), cap(workload, config) + 30)
        if not sample.cpu_seconds:  # an isolated sample measured its own process's
            sample.cpu_seconds = meter.spent(before, meter.snapshot())
    except TimeoutError as exc:
        entry.status, entry.note = "timeout", f"no result within {cap(workload, config):g} s"
        log.debug("%s %s timed out: %s", system.name, workload.name, exc)
    except Exception as exc:
        entry.status, entry.note = "failed", f"{type(exc).__name__}: {_first_line(exc)}"
        log.debug("%s %s failed:\n%s", system.name, workload.name, traceback.format_exc())
    else:
        entry.samples.append(sample)
        return
    progress(f"{system.name} {workload.name}: {entry.status}: {entry.note}")
    try:
        await system.recover()
    except Exception as exc:
        progress(f"{system.name}: cannot recover ({type(exc).__name__}: {_first_line(exc)})")


def cap(workload: Workload, config: BenchConfig) -> float:
    """The cap on one repetition of ``workload``."""
    return max(config.timeout, SCALE_TIMEOUT) if workload.scale else config.timeout


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
