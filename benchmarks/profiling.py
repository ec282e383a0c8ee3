"""Profiles taken with ``--profile DIR``: cProfile around the in-process coordinator's
submit-to-result, and py-spy (when installed) sampling the worker processes.

Files written, for each workload ``W``:

- ``aexec-W-coordinator.pstats`` and ``aexec-W-coordinator.txt`` (top functions by own time);
- ``aexec-W-worker-PID.txt``: py-spy's collapsed stacks (``--format raw``, idle included),
  and ``aexec-W-worker-PID.summary.txt``: own time per function, busy share, top stacks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import cProfile
import io
import pstats
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

IDLE_FRAMES = ("select (selectors.py", "run_forever (asyncio/base_events.py", "_run_once")


class Profiler:
    """Profiles one workload: the coordinator (this process) and worker processes."""

    def __init__(self, directory: Path, label: str, worker_pids: list[int]) -> None:
        self.directory = directory
        self.label = label
        self.worker_pids = worker_pids
        self.profile = cProfile.Profile()
        self._spies: list[tuple[asyncio.subprocess.Process, Path]] = []
        directory.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def coordinator(self) -> Iterator[None]:
        self.profile.enable()
        try:
            yield
        finally:
            self.profile.disable()

    async def start_workers(self, rate: int = 250) -> None:
        spy = shutil.which("py-spy")
        if spy is None:
            return
        for pid in self.worker_pids:
            out = self.directory / f"{self.label}-worker-{pid}.txt"
            process = await asyncio.create_subprocess_exec(
                spy,
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--idle",
                "--rate",
                str(rate),
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
                out.with_suffix(".summary.txt").write_text(summary)
        self._spies.clear()
        stats_file = self.directory / f"{self.label}-coordinator.pstats"
        self.profile.dump_stats(str(stats_file))
        text = io.StringIO()
        stats = pstats.Stats(self.profile, stream=text)
        stats.sort_stats("tottime").print_stats(45)
        stats.sort_stats("cumulative").print_stats(45)
        stats_file.with_suffix(".txt").write_text(text.getvalue())


def summarize_collapsed(text: str, top: int = 40) -> str:
    """Own time per function from py-spy's collapsed stacks, with the busy share."""
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
        leaf = frames[-1]
        if any(marker in leaf for marker in IDLE_FRAMES) or "poll" in leaf.split(" ")[0]:
            idle += count
            continue
        own[_short(leaf)] += count
        for name in {_short(f) for f in frames}:
            inclusive[name] += count
    busy = total - idle
    lines = [
        f"samples {total}, idle (waiting in the event loop) {idle}, busy {busy}"
        f" ({100 * busy / max(total, 1):.1f}%)",
        "",
        "own time (share of busy samples):",
    ]
    for name, count in own.most_common(top):
        lines.append(f"  {100 * count / max(busy, 1):5.1f}%  {name}")
    lines += ["", "inclusive time (share of busy samples):"]
    for name, count in inclusive.most_common(top):
        lines.append(f"  {100 * count / max(busy, 1):5.1f}%  {name}")
    return "\n".join(lines) + "\n"


def _short(frame: str) -> str:
    """``fn (path/to/module.py:12)`` -> ``fn (module.py)``: lines merged per function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    return f"{name} ({'/'.join(parts[-2:])})" if path else name
