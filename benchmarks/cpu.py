"""CPU time by process role during one repetition, read from /proc (Linux only).

On a small shared machine wall time swings with whatever else runs; CPU time per step,
split by who spent it (this process - the client or in-process coordinator -, the
system's worker processes and their children, RabbitMQ, Redis), swings much less, and says
where each step's cost goes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROC = Path("/proc")


def _stat(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (0 if it is gone)."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


@functools.cache
def listening_process(port: int) -> int | None:
    """The pid that listens on TCP ``port`` (e.g. the RabbitMQ node behind the broker URL,
    not another node a test suite runs beside it), or None."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(fields[9])
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in targets:
                    return int(entry.name)
        except OSError:
            continue
    return None


def trees(roots: Iterable[int]) -> list[int]:
    """Every process in the trees under ``roots``."""
    return sorted({p for root in roots for p in descendants(root)})


class CpuMeter:
    """Snapshots of CPU seconds per role: ``client`` is this process alone (the benchmark's
    client, or aexec's in-process coordinator), ``rabbitmq`` and ``redis`` the servers, and
    ``roles`` the system's own (each a list of pids)."""

    def __init__(
        self, roles: Mapping[str, Iterable[int]], *, broker_port: int = 5672, redis_port: int = 6379
    ) -> None:
        servers = {
            "rabbitmq": listening_process(broker_port),
            "redis": listening_process(redis_port),
        }
        self.roles = {
            "client": [os.getpid()],
            **{role: list(pids) for role, pids in roles.items()},
            **{role: [pid] for role, pid in servers.items() if pid is not None},
        }

    def snapshot(self) -> dict[str, float]:
        return {role: sum(cpu_seconds(p) for p in pids) for role, pids in self.roles.items()}

    @staticmethod
    def spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
        """CPU seconds spent per role between two snapshots."""
        return {role: round(after[role] - before[role], 3) for role in before}
