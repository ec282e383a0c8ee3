"""The systems compared: each starts its own worker processes and runs one repetition of a
workload at a time.

A system is an async context manager (entering starts its workers, leaving stops them) with
``run(workload)`` returning one :class:`Sample`.  ``unavailable()`` says why it cannot run
here (not installed, ...); ``supports(workload)`` why it does not run a workload.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.spec import Workload

ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What every system shares in one benchmark run."""

    broker: str  # amqp://... without the aexec prefix
    prefix: str  # every broker entity of this run is named <prefix>.*
    workdir: Path  # logs, SQLite stores, object directories
    workers: int = 2  # worker processes per system
    concurrency: int = 100  # in-flight steps per worker process (the prefetch)
    timeout: float = 120.0  # cap on one repetition
    redis: str = "redis://127.0.0.1:6379/0"
    profile_dir: Path | None = None
    profiler: str = "py-spy"  # or "cprofile"
    metrics: bool = False  # aexec with /metrics served and scraped every second
    python: str = sys.executable


@dataclass(slots=True)
class Sample:
    """One repetition: wall seconds, CPU seconds by process role (filled in by the runner),
    and anything else worth recording."""

    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)


class System:
    """Base class: subclasses set ``name`` and implement ``run``."""

    name = "system"

    def __init__(self, config: BenchConfig) -> None:
        self.config = config

    @classmethod
    def unavailable(cls) -> str | None:
        return None

    def supports(self, workload: Workload) -> str | None:
        return None

    def describe(self) -> dict[str, Any]:
        """How this system was set up (for the JSON)."""
        return {}

    def cpu_roles(self) -> dict[str, list[int]]:
        """The system's processes by role (``workers``, ...) whose CPU time is measured."""
        return {}

    async def __aenter__(self) -> System:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def prepare(self, workload: Workload, *, warm_up: bool = False) -> None:
        """Before the repetitions of ``workload`` (not measured)."""
        return None

    async def run(self, workload: Workload) -> Sample:
        raise NotImplementedError

    async def finish(self) -> dict[str, Any]:
        """After the repetitions of a workload; returns extra fields for its result."""
        return {}

    async def recover(self) -> None:
        """After a timed-out repetition: get back to a clean state (drop queued work)."""
        return None
