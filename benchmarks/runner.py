"""Run every workload on every system, one system at a time, and collect result rows.

Each system starts its own workers, is warmed up (not measured), then runs each workload's
repetitions back to back.  A repetition that exceeds the cap or fails is recorded with its
status (``timeout``/``failed``) and the system recovers before the next workload; a system
that is not installed, or does not run a workload, gets ``skipped`` rows saying why.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.spec import BY_NAME, Workload
from benchmarks.systems import BenchConfig, Sample, System

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


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
    row: dict[str, Any] = {
        "workload": workload.name,
        "system": system,
        "seconds": statistics.median(seconds) if seconds else None,
        "min": min(seconds) if seconds else None,
        "max": max(seconds) if seconds else None,
        "steps": workload.steps,
        "repetitions": len(seconds),
        "steps_per_second": workload.steps / statistics.median(seconds) if seconds else None,
        "status": status,
        "samples": [round(s, 6) for s in seconds],
    }
    if note:
        row["note"] = note
    for sample in samples:  # per-sample extras: keep the largest (e.g. a peak RSS)
        for key, value in sample.extra.items():
            row[key] = max(row.get(key, value), value)
    row.update(extra or {})
    return row


async def run_system(
    cls: type[System],
    config: BenchConfig,
    workloads: Sequence[Workload],
    *,
    quick: bool,
    progress: Progress,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows of one system, and its description."""
    reason = cls.unavailable()
    if reason is not None:
        progress(f"{cls.name}: skipped ({reason})")
        return [result_row(w, cls.name, [], status="skipped", note=reason) for w in workloads], {}
    system = cls(config)
    rows: list[dict[str, Any]] = []
    progress(f"{cls.name}: starting workers")
    try:
        async with system:
            await _warm_up(system)
            for workload in workloads:
                rows.append(await _run_workload(system, workload, quick, config, progress))
            description = system.describe()
    except Exception as exc:
        log.debug("system %s failed", cls.name, exc_info=True)
        note = f"{type(exc).__name__}: {exc}"
        progress(f"{cls.name}: failed: {note}")
        done = {r["workload"] for r in rows}
        rows += [
            result_row(w, cls.name, [], status="failed", note=note)
            for w in workloads
            if w.name not in done
        ]
        return rows, {}
    return rows, description


async def _warm_up(system: System) -> None:
    for name, times in (("roundtrip", 3), ("parallel_50", 1)):
        workload = BY_NAME[name]
        await system.prepare(workload)
        try:
            for _ in range(times):
                await asyncio.wait_for(system.run(workload), system.config.timeout)
        finally:
            await system.finish()


async def _run_workload(
    system: System, workload: Workload, quick: bool, config: BenchConfig, progress: Progress
) -> dict[str, Any]:
    reason = system.supports(workload)
    if reason is not None:
        return result_row(workload, system.name, [], status="skipped", note=reason)
    repetitions = workload.quick_repetitions if quick else workload.repetitions
    samples: list[Sample] = []
    status, note = "ok", None
    await system.prepare(workload)
    try:
        for _ in range(repetitions):
            try:
                # Systems whose client blocks enforce config.timeout themselves; the margin
                # lets them report it before this (which cannot stop a thread) fires.
                sample = await asyncio.wait_for(system.run(workload), config.timeout + 30)
            except TimeoutError as exc:
                status, note = "timeout", f"no result within {config.timeout:g} s"
                log.debug("%s %s timed out: %s", system.name, workload.name, exc)
            except Exception as exc:
                status, note = "failed", f"{type(exc).__name__}: {_first_line(exc)}"
                log.debug("%s %s failed:\n%s", system.name, workload.name, traceback.format_exc())
            else:
                samples.append(sample)
                continue
            progress(f"{system.name} {workload.name}: {status}: {note}")
            await system.recover()
            break
    finally:
        extra = await system.finish()
    row = result_row(workload, system.name, samples, status=status, note=note, extra=extra)
    if samples:
        progress(
            f"{system.name:12s} {workload.name:30s} {row['seconds']:9.4f} s"
            f"  ({row['min']:.4f}-{row['max']:.4f}, n={len(samples)})"
            f"  {row['steps_per_second']:8.0f} steps/s"
        )
    return row


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
