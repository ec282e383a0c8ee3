"""Child processes the benchmark starts (workers, a coordinator): started, awaited until they
say they are ready, and always stopped by their own pid.

A child's stdout and stderr go through one pipe that is read line by line: until its ready
line appears (no fixed sleeps), then copied to a log file so the pipe never fills up.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

_LIVE: set[int] = set()


def _kill_leftovers() -> None:
    """Last resort at interpreter exit: SIGKILL the children still alive (ours only)."""
    for pid in list(_LIVE):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


atexit.register(_kill_leftovers)


class ChildFailed(RuntimeError):
    """A child process exited, or never said it was ready."""


class Child:
    """One subprocess: ``await start()``, then ``await stop()`` (SIGTERM, then SIGKILL)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_file: Path,
        ready: str | None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_file = log_file
        self.ready_marker = ready
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.process: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ChildFailed(f"{self.name} is not started")
        return self.process.pid

    async def start(self, within: float = 60.0) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,  # Ctrl-C in the terminal reaches us, and we stop them
        )
        _LIVE.add(self.process.pid)
        ready = asyncio.get_running_loop().create_future()
        self._pump = asyncio.get_running_loop().create_task(self._copy_output(ready))
        try:
            await asyncio.wait_for(asyncio.shield(ready), within)
        except TimeoutError:
            await self.stop()
            raise ChildFailed(
                f"{self.name} did not report ready within {within:g} s (see {self.log_file})"
            ) from None
        except ChildFailed:
            await self.stop()
            raise

    async def _copy_output(self, ready: asyncio.Future[None]) -> None:
        assert self.process is not None and self.process.stdout is not None
        stream = self.process.stdout
        with self.log_file.open("wb") as out:
            if self.ready_marker is None and not ready.done():
                ready.set_result(None)
            while line := await stream.readline():
                out.write(line)
                marker = self.ready_marker
                if not ready.done() and marker is not None and marker.encode() in line:
                    out.flush()
                    ready.set_result(None)
            if not ready.done():
                ready.set_exception(
                    ChildFailed(f"{self.name} exited before it was ready (see {self.log_file})")
                )

    async def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; returns the exit code."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        _LIVE.discard(process.pid)
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._pump, 5)
        return process.returncode

    def peak_rss_bytes(self) -> int | None:
        """``VmHWM`` from /proc: the child's peak resident set size so far."""
        return peak_rss_bytes(self.pid)

    def rss_bytes(self) -> int | None:
        return _status_field(self.pid, "VmRSS")


def peak_rss_bytes(pid: int) -> int | None:
    """``VmHWM`` from /proc: a process's peak resident set size since it started, or since
    :func:`reset_peak_rss`."""
    return _status_field(pid, "VmHWM")


def reset_peak_rss(pid: int) -> None:
    """Reset a process's peak RSS to its current RSS (Linux >= 4.0; silently nothing where
    /proc does not allow it)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def _status_field(pid: int, field: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    return None


async def stop_all(children: Sequence[Child]) -> None:
    await asyncio.gather(*(child.stop() for child in children), return_exceptions=True)
