"""The ledger: one line per execution of step code, written by the step before it does
anything else, read back by the checker.

Each worker process appends to a file of its own, ``<worker>.<pid>.ledger`` in the
directory named by ``AEXEC_FAULTS_LEDGER`` (the worker's name comes from
``AEXEC_FAULTS_WORKER``), with a single ``os.write`` on an ``O_APPEND`` descriptor: the
line is in the kernel before the step's work begins, so it survives a SIGKILL of the
worker, and lines of concurrent steps never interleave.  A line is::

    run_id <TAB> step_key <TAB> attempt <TAB> worker <TAB> pid <TAB> start (epoch seconds)

This module is imported by the workers (through the pipelines): it keeps to the standard
library and ``aexec.current()``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from aexec import current

LEDGER_ENV = "AEXEC_FAULTS_LEDGER"
WORKER_ENV = "AEXEC_FAULTS_WORKER"
SUFFIX = ".ledger"


@dataclass(frozen=True, slots=True)
class Execution:
    """One start of step code: which attempt of which step, where and when."""

    run_id: str
    step: str
    attempt: int
    worker: str
    pid: int
    started: float

    def line(self) -> str:
        fields = (self.run_id, self.step, self.attempt, self.worker, self.pid, repr(self.started))
        return "\t".join(str(f) for f in fields) + "\n"

    @classmethod
    def parse(cls, line: str) -> Execution:
        """The execution a ledger line records; ValueError for anything else."""
        run_id, step, attempt, worker, pid, started = line.rstrip("\n").split("\t")
        return cls(run_id, step, int(attempt), worker, int(pid), float(started))


def note() -> None:
    """Record that the calling step starts now (call it first thing in the step).

    Outside the campaign (no ``AEXEC_FAULTS_LEDGER``) it records nothing."""
    directory = os.environ.get(LEDGER_ENV)
    if not directory:
        return
    ctx = current()
    worker = os.environ.get(WORKER_ENV, "unnamed")
    pid = os.getpid()
    entry = Execution(ctx.run_id, ctx.step_key, ctx.attempt, worker, pid, time.time())
    path = os.path.join(directory, f"{worker}.{pid}{SUFFIX}")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, entry.line().encode())
    finally:
        os.close(fd)


def read(directory: Path) -> tuple[list[Execution], list[str]]:
    """Every execution recorded under ``directory``, oldest first, and the lines that
    could not be parsed (``file: line``)."""
    executions: list[Execution] = []
    unreadable: list[str] = []
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                executions.append(Execution.parse(line))
            except ValueError:
                unreadable.append(f"{path.name}: {line!r}")
    executions.sort(key=lambda e: e.started)
    return executions, unreadable
