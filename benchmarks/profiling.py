"""Profiles taken with ``--profile DIR`` (aexec only), workload by workload.

With py-spy installed (``pip install py-spy``), every process is sampled (wall clock, idle
included, 250 Hz): the coordinator (this process: the in-process ``Executor``) and each
worker.  ``--profiler cprofile`` instead runs cProfile around the coordinator's
submit-to-result (deterministic call counts, about twice the run time).  Files written, for
each workload ``W``:

- ``aexec-W-coordinator.txt`` / ``aexec-W-worker-PID.txt``: py-spy's collapsed stacks;
- ``...summary.txt`` beside each: busy share and CPU seconds, own and inclusive time per
  function;
- with cProfile: ``aexec-W-coordinator.pstats`` and ``aexec-W-coordinator.cprofile.txt``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import cProfile
import io
import os
import pstats
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

RATE = 250  # py-spy samples per second
# A sample whose innermost Python frame is one of these is the event loop waiting for I/O.
IDLE_LEAVES = ("Runner.run ", "BaseEventLoop.run_forever ", "BaseEventLoop._run_once ", "select ")


def py_spy() -> str | None:
    return shutil.which("py-spy")


class Profiler:
    """Profiles one workload: the coordinator (this process) and the worker processes."""

    def __init__(self, directory: Path, label: str, worker_pids: list[int], tool: str) -> None:
        self.directory = directory
        self.label = label
        self.worker_pids = worker_pids
        self.tool = tool if tool != "py-spy" or py_spy() else "cprofile"
        self.profile = cProfile.Profile() if self.tool == "cprofile" else None
        self._spies: list[tuple[asyncio.subprocess.Process, Path]] = []
        directory.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def coordinator(self) -> Iterator[None]:
        """Around one submit-to-result (only cProfile needs it)."""
        if self.profile is None:
            yield
            return
        self.profile.enable()
        try:
            yield
        finally:
            self.profile.disable()

    async def start(self) -> None:
        """Start sampling (py-spy): this process as the coordinator, and every worker."""
        spy = py_spy()
        if spy is None:
            return
        targets = [(pid, f"worker-{pid}") for pid in self.worker_pids]
        if self.tool == "py-spy":
            targets.insert(0, (os.getpid(), "coordinator"))
        for pid, what in targets:
            out = self.directory / f"{self.label}-{what}.txt"
            process = await asyncio.create_subprocess_exec(
                spy,
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--idle",
                "--rate",
                str(RATE),
                "-o",
                str(out),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            self._spies.append((process, out))

    async def stop(self) -> None:
        for process, _ in self._spies:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
        for process, out in self._spies:
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
            if out.exists():
                summary = summarize_collapsed(out.read_text())
                out.with_name(out.stem + ".summary.txt").write_text(summary)
        self._spies.clear()
        if self.profile is not None:
            stats_file = self.directory / f"{self.label}-coordinator.pstats"
            self.profile.dump_stats(str(stats_file))
            text = io.StringIO()
            stats = pstats.Stats(self.profile, stream=text)
            stats.sort_stats("tottime").print_stats(45)
            stats.sort_stats("cumulative").print_stats(45)
            stats_file.with_suffix(".cprofile.txt").write_text(text.getvalue())


def summarize_collapsed(text: str, top: int = 40, rate: int = RATE) -> str:
    """Busy share, CPU seconds and time per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        if frames[-1].startswith(IDLE_LEAVES):
            idle += count
            continue
        own[_short(frames[-1])] += count
        for name in {_short(f) for f in frames}:
            inclusive[name] += count
    busy = total - idle
    lines = [
        f"samples {total} ({total / rate:.1f} s at {rate} Hz, all threads); "
        f"idle in the event loop {idle}; busy {busy} ({100 * busy / max(total, 1):.1f}%, "
        f"{busy / rate:.2f} s)",
        "",
        "own time (share of busy samples):",
    ]
    lines += [f"  {100 * n / max(busy, 1):5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive time (share of busy samples):"]
    lines += [f"  {100 * n / max(busy, 1):5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def _short(frame: str) -> str:
    """``fn (path/to/module.py:12)`` -> ``fn (to/module.py)``: lines merged per function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(path.split('/')[-2:])})" if path else name
