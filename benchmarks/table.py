"""The results as a table (text for the terminal, Markdown for BENCHMARKS.md) and the
targets of issue 5, checked on one run's numbers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Row = dict[str, Any]
Grid = tuple[list[str], list[list[str]]]

TARGET_RAW_RATIO = 0.75  # aexec >= 0.75 x the raw floor's throughput on independent_1000
TARGET_CHAIN_SECONDS = 6.0  # chain_of_chords_1000 over RabbitMQ
# Issue 13: aexec driving Celery workers (celery-workers) on chain_of_chords_100, as many
# times faster than each orchestrator of the same worker node.
CELERY_TARGETS = {"celery": 10.0, "celery-dyrygent": 100.0}


def seconds_text(value: float) -> str:
    if value < 0.1:
        return f"{value * 1000:.1f} ms"
    if value < 10:
        return f"{value:.3f} s"
    return f"{value:.1f} s"


def range_text(row: Row) -> str:
    """min-max in the unit :func:`seconds_text` uses for the median."""
    lo, hi, median = row["min"], row["max"], row["seconds"]
    if median < 0.1:
        return f"{lo * 1000:.1f}-{hi * 1000:.1f} ms"
    return f"{lo:.3f}-{hi:.3f}" if median < 10 else f"{lo:.1f}-{hi:.1f}"


def cell(row: Row | None) -> str:
    if row is None:
        return "-"
    if row["seconds"] is None:
        return row["status"]
    text = f"{seconds_text(row['seconds'])} ({range_text(row)}) {row['steps_per_second']:,.0f}/s"
    if row["status"] != "ok":
        text += f" [{row['status']}]"
    return text


def index(rows: Sequence[Row]) -> dict[tuple[str, str], Row]:
    return {(r["workload"], r["system"]): r for r in rows}


def _order(rows: Sequence[Row], key: str) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.setdefault(row[key], None)
    return list(seen)


ROLE_ABBREVIATIONS = {
    "client": "c",
    "process": "p",
    "coordinator": "co",
    "workers": "w",
    "rabbitmq": "mq",
    "redis": "rd",
}


def cpu_cell(row: Row | None) -> str:
    """``total (c client, w workers, mq rabbitmq, ...)`` in CPU milliseconds per step."""
    if row is None or not row.get("cpu_ms_per_step"):
        return "-"
    cpu = row["cpu_ms_per_step"]
    parts = ", ".join(f"{ROLE_ABBREVIATIONS.get(k, k)} {v:.2f}" for k, v in cpu.items())
    return f"{sum(cpu.values()):.2f} ({parts})"


def grid(rows: Sequence[Row], render: Callable[[Row | None], str] = cell) -> Grid:
    workloads, systems = _order(rows, "workload"), _order(rows, "system")
    by = index(rows)
    header = ["workload", "steps", *systems]
    body = []
    for workload in workloads:
        steps = next(r["steps"] for r in rows if r["workload"] == workload)
        body.append([workload, f"{steps:,}", *(render(by.get((workload, s))) for s in systems)])
    return header, body


def text_table(rows: Sequence[Row], render: Callable[[Row | None], str] = cell) -> str:
    header, body = grid(rows, render)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = []
    for n, line in enumerate([header, *body]):
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row], render: Callable[[Row | None], str] = cell) -> str:
    header, body = grid(rows, render)
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines)


def notes(rows: Sequence[Row]) -> list[str]:
    """Why cells are empty, and the extra measurements (peak RSS)."""
    found = []
    for row in rows:
        if row.get("note"):
            found.append(f"{row['system']} {row['workload']}: {row['status']}: {row['note']}")
        if "coordinator_peak_rss_mb" in row:
            found.append(
                f"{row['system']} {row['workload']}: coordinator peak RSS "
                f"{row['coordinator_peak_rss_mb']:.1f} MiB"
            )
        if "process_peak_rss_mb" in row:
            found.append(
                f"{row['system']} {row['workload']}: peak RSS of the process "
                f"{row['process_peak_rss_mb']:.1f} MiB"
            )
    return found


def targets(rows: Sequence[Row]) -> dict[str, Any]:
    """Issue 5's targets, from this run's numbers (None where a number is missing)."""
    by = index(rows)
    result: dict[str, Any] = {}
    aexec = by.get(("independent_1000", "aexec"))
    raw = by.get(("independent_1000", "raw-aio-pika"))
    if aexec and raw and aexec["seconds"] and raw["seconds"]:
        ratio = raw["seconds"] / aexec["seconds"]
        result["raw_ratio_independent_1000"] = {
            "value": round(ratio, 3),
            "target": TARGET_RAW_RATIO,
            "met": ratio >= TARGET_RAW_RATIO,
        }
    chain = by.get(("chain_of_chords_1000", "aexec"))
    if chain and chain["seconds"]:
        result["chain_of_chords_1000_seconds"] = {
            "value": round(chain["seconds"], 3),
            "target": TARGET_CHAIN_SECONDS,
            "met": chain["seconds"] <= TARGET_CHAIN_SECONDS,
        }
    result.update(_celery_targets(by))
    for other in ("celery", "dask"):
        speedups: dict[str, float | None] = {}
        for workload in _order(rows, "workload"):
            mine, theirs = by.get((workload, "aexec")), by.get((workload, other))
            if not mine or not theirs or theirs["status"] == "skipped" or not mine["seconds"]:
                continue
            if theirs["seconds"] is None or theirs["status"] != "ok":
                speedups[workload] = None  # they timed out or failed: aexec is faster
            else:
                speedups[workload] = round(theirs["seconds"] / mine["seconds"], 2)
        if speedups:
            result[f"faster_than_{other}"] = {
                "speedup": speedups,
                "met": all(v is None or v > 1.0 for v in speedups.values()),
            }
    return result


def _celery_targets(by: dict[tuple[str, str], Row]) -> dict[str, Any]:
    """Issue 13's targets: celery-workers against Celery's canvas and celery-dyrygent on
    chain_of_chords_100 (a timed-out orchestrator counts as its cap: a lower bound on the
    speedup), chain_of_chords_1000 finishing, and celery-workers against the worker node's
    own floor (celery-floor: the same number of tasks, no dependencies)."""
    result: dict[str, Any] = {}
    mine = by.get(("chain_of_chords_100", "celery-workers"))
    if mine and mine["status"] == "ok" and mine["seconds"]:
        for other, target in CELERY_TARGETS.items():
            theirs = by.get(("chain_of_chords_100", other))
            if not theirs or theirs["status"] == "skipped":
                continue
            if theirs["status"] == "ok" and theirs["seconds"]:
                ratio, bound = theirs["seconds"] / mine["seconds"], False
            elif theirs["status"] == "timeout" and theirs.get("cap"):
                ratio, bound = theirs["cap"] / mine["seconds"], True
            else:
                continue
            result[f"celery_workers_vs_{other.replace('-', '_')}_chain_of_chords_100"] = {
                "value": round(ratio, 2),
                "lower_bound": bound,
                "target": target,
                "met": ratio >= target,
            }
        floor = by.get(("chain_of_chords_100", "celery-floor"))
        if floor and floor["status"] == "ok" and floor["seconds"]:
            result["celery_workers_over_floor_chain_of_chords_100"] = {
                "value": round(mine["seconds"] / floor["seconds"], 2)
            }
            # The most any orchestrator of this worker node could gain over each.
            for other in CELERY_TARGETS:
                theirs = by.get(("chain_of_chords_100", other))
                if theirs and theirs["status"] == "ok" and theirs["seconds"]:
                    result[f"{other.replace('-', '_')}_over_floor_chain_of_chords_100"] = {
                        "value": round(theirs["seconds"] / floor["seconds"], 2)
                    }
    big = by.get(("chain_of_chords_1000", "celery-workers"))
    if big and big["status"] != "skipped":
        result["celery_workers_chain_of_chords_1000"] = {
            "seconds": big["seconds"],
            "met": big["status"] == "ok",
        }
    return result


def _celery_text(found: dict[str, Any]) -> list[str]:
    lines = []
    for other in CELERY_TARGETS:
        entry = found.get(f"celery_workers_vs_{other.replace('-', '_')}_chain_of_chords_100")
        if entry:
            at_least = "at least " if entry["lower_bound"] else ""
            lines.append(
                f"celery-workers vs {other} on chain_of_chords_100: {at_least}"
                f"x{entry['value']:.1f} (target >= x{entry['target']:g}): "
                f"{'met' if entry['met'] else 'NOT met'}"
            )
    floor = found.get("celery_workers_over_floor_chain_of_chords_100")
    if floor:
        lines.append(
            f"celery-workers / celery-floor on chain_of_chords_100: x{floor['value']:.2f} "
            "(the worker node's floor: its task messages wave after wave, no orchestrator)"
        )
    for other in CELERY_TARGETS:
        bound = found.get(f"{other.replace('-', '_')}_over_floor_chain_of_chords_100")
        if bound:
            lines.append(
                f"{other} / celery-floor on chain_of_chords_100: x{bound['value']:.1f} (the "
                "most any orchestrator of this worker node could be faster than it)"
            )
    big = found.get("celery_workers_chain_of_chords_1000")
    if big:
        done = f"finished in {big['seconds']:.1f} s" if big["met"] else "did NOT finish"
        lines.append(f"celery-workers chain_of_chords_1000: {done}")
    return lines


def targets_text(found: dict[str, Any]) -> list[str]:
    lines = _celery_text(found)
    raw = found.get("raw_ratio_independent_1000")
    if raw:
        lines.append(
            f"aexec / raw-aio-pika throughput on independent_1000: {raw['value']:.2f}"
            f" (target >= {raw['target']}): {'met' if raw['met'] else 'NOT met'}"
        )
    chain = found.get("chain_of_chords_1000_seconds")
    if chain:
        lines.append(
            f"aexec chain_of_chords_1000: {chain['value']:.2f} s"
            f" (target <= {chain['target']:g} s): {'met' if chain['met'] else 'NOT met'}"
        )
    for other in ("celery", "dask"):
        entry = found.get(f"faster_than_{other}")
        if not entry:
            continue
        parts = [
            f"{w} {'x' + format(v, '.2f') if v is not None else '(theirs failed)'}"
            for w, v in entry["speedup"].items()
        ]
        lines.append(
            f"aexec faster than {other} on every workload: {'met' if entry['met'] else 'NOT met'}"
            f" (their time / aexec's: {', '.join(parts)})"
        )
    return lines
