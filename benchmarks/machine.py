"""What the numbers were measured on: CPU, OS, Python, broker and library versions."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from benchmarks.broker import server_version
from benchmarks.systems import ROOT

PACKAGES = (
    "aexec",
    "aio-pika",
    "aiormq",
    "msgpack",
    "uvloop",
    "celery",
    "kombu",
    "redis",
    "dask",
    "distributed",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def package_versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def redis_version(url: str) -> str | None:
    try:
        import redis
    except ImportError:
        return None
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        try:
            return str(client.info("server").get("redis_version"))
        finally:
            client.close()
    except Exception:  # an absent Redis is reported as None, never fatal here
        return None


def git_commit() -> str | None:
    """The repository's commit, with ``+dirty`` when ``aexec/`` differs from it.  Read
    only: ``--no-optional-locks`` keeps git from touching the index while others commit."""
    git = ["git", "--no-optional-locks"]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "diff", "--quiet", "HEAD", "--", "aexec"],
            cwd=ROOT,
            capture_output=True,
            check=False,
            timeout=10,
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty == 1 else head


async def describe(broker: str, redis_url: str) -> dict[str, Any]:
    return {
        "aexec_commit": git_commit(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gb": memory_total_gb(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "rabbitmq": await server_version(broker),
        "redis": redis_version(redis_url),
        "packages": package_versions(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
