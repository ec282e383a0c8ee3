"""Real processes for end-to-end tests: the CLI in subprocesses, their output collected.

Every test gets its own ``AEXEC_HOME`` and a random queue prefix (``AEXEC_QUEUE_PREFIX``);
every process a test starts is killed, by its pid, when the test ends.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0  # for anything that should take a second or two


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "aexec", *args]


def make_env(home: Path, prefix: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEXEC_")}
    env["AEXEC_HOME"] = str(home)
    if prefix is not None:
        env["AEXEC_QUEUE_PREFIX"] = prefix
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class Process:
    """A subprocess whose output is collected by reader threads, so that its pipes never
    fill up, and whose stderr lines can be awaited."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._out_lines: queue.Queue[str | None] = queue.Queue()
        self._readers = [
            threading.Thread(
                target=self._read, args=(self.popen.stdout, self.out, self._out_lines)
            ),
            threading.Thread(target=self._read, args=(self.popen.stderr, self.err, self._lines)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()

    @staticmethod
    def _read(
        stream: IO[str] | None, into: list[str], lines: queue.Queue[str | None] | None
    ) -> None:
        assert stream is not None
        with stream:
            for line in stream:
                into.append(line)
                if lines is not None:
                    lines.put(line)
        if lines is not None:
            lines.put(None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return f"exit {self.popen.poll()}\nstdout:\n{''.join(self.out)}stderr:\n{''.join(self.err)}"

    def wait_for_line(
        self, fragment: str, timeout: float = TIMEOUT, *, stdout: bool = False
    ) -> str:
        """The first stderr line (stdout line, with ``stdout``) not yet awaited that
        contains ``fragment``."""
        deadline = time.monotonic() + timeout
        lines = self._out_lines if stdout else self._lines
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line with {fragment!r} within {timeout:g} s\n{self.output()}")
            if line is None:
                self.popen.wait(timeout=TIMEOUT)
                pytest.fail(f"exited before a line with {fragment!r}\n{self.output()}")
            if fragment in line:
                return line

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after {timeout:g} s\n{self.output()}")
        for reader in self._readers:
            reader.join(timeout=TIMEOUT)
        return code

    def stop(self) -> None:
        """Kill the process if it still runs (cleanup; tests assert graceful exits)."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=TIMEOUT)
        for reader in self._readers:
            reader.join(timeout=TIMEOUT)


class Cluster:
    """Processes of one test: a home directory, a queue prefix, a broker URL."""

    def __init__(self, home: Path, prefix: str, broker: str) -> None:
        self.home = home
        self.broker = broker
        self.env = make_env(home, prefix)
        self.processes: list[Process] = []

    def start(self, *args: str) -> Process:
        process = Process(command(*args), self.env, self.home.parent)
        self.processes.append(process)
        return process

    def start_worker(self, name: str, *args: str) -> tuple[Process, str]:
        """A worker (``-v``) named ``name``, once ready; returns it and its ready line."""
        worker = self.start("worker", "start", "-v", "-n", name, *args, "--broker", self.broker)
        return worker, worker.wait_for_line(f"worker {name} ready:")

    def aexec(self, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command(*args),
            env=self.env,
            cwd=self.home.parent,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def run(self, file: str, *args: str) -> tuple[int, dict[str, Any]]:
        """``aexec run FILE --json`` through the broker: its exit code and report."""
        proc = self.aexec("run", file, *args, "--broker", self.broker, "--json")
        assert proc.stdout, proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    def workers(self) -> list[dict[str, Any]]:
        proc = self.aexec("worker", "list", "--json", "--broker", self.broker)
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines()]


def wait_for_file(path: Path, process: Process, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.popen.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{path.name} never appeared\n{process.output()}")
        time.sleep(0.02)


def show(cluster: Cluster, run_id: str) -> dict[str, Any] | None:
    proc = cluster.aexec("runs", "show", run_id, "--json")
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def use_backends(cluster: Cluster, backends: str, request: pytest.FixtureRequest) -> None:
    """``sqlite``: the embedded defaults under AEXEC_HOME; ``postgres``: the production
    backends — PostgreSQL for the store and the S3 server for outputs."""
    if backends == "postgres":
        endpoint = request.getfixturevalue("s3_env")
        bucket = request.getfixturevalue("s3_bucket")
        cluster.env.update(
            {
                "AEXEC_STORE": request.getfixturevalue("postgres_dsn"),
                "AEXEC_OBJECTS": f"s3://{bucket}/outputs",
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": "us-east-1",
            }
        )
