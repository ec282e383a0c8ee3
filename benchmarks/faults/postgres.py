"""A private PostgreSQL cluster: ``initdb`` and ``pg_ctl`` in a directory of the caller's,
on a free port of 127.0.0.1, trust authentication, stopped at the end whatever happens.
Given :class:`ClusterSsl` it serves SSL with that certificate and refuses TCP connections
that do not use it (``hostssl`` only in ``pg_hba.conf``).

The binaries come from ``AEXEC_PG_BIN`` or the newest ``/usr/lib/postgresql/*/bin``.  As
root (PostgreSQL refuses to run as root) the cluster runs as the ``postgres`` user, which
then owns its directory.  ``fsync`` is off: the cluster is thrown away, and durability of
PostgreSQL itself is not what the campaign tests.

As root, the cluster's directory must be reachable by the ``postgres`` user (every
directory above it searchable by others): :func:`cluster_home` makes one that is.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.faults.net import free_port

CTL_TIMEOUT = 60.0


class ClusterUnavailable(RuntimeError):
    """PostgreSQL is not installed here, or the cluster would not start."""


@dataclass(frozen=True)
class ClusterSsl:
    """The server certificate and key (PEM) of a cluster that serves SSL only."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class PrivatePostgres:
    """A running cluster: its data directory and port; connect as ``postgres``."""

    base: Path
    port: int
    bin_dir: Path
    ssl: bool = False  # serves SSL, and TCP connections must use it

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log_file(self) -> Path:
        return self.base / "postgres.log"


def postgres_bin() -> Path:
    configured = os.environ.get("AEXEC_PG_BIN")
    if configured:
        found = [configured]
    else:
        found = sorted(
            glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
        )
    if not found or not (Path(found[-1]) / "initdb").exists():
        raise ClusterUnavailable("no PostgreSQL binaries (initdb, pg_ctl): set AEXEC_PG_BIN")
    return Path(found[-1])


def _as_owner() -> dict[str, Any]:
    """``subprocess`` arguments that run PostgreSQL as ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterUnavailable("running as root and there is no postgres user") from None
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _run(argv: list[str], base: Path) -> None:
    proc = subprocess.run(
        argv,
        cwd=base,
        capture_output=True,
        text=True,
        timeout=CTL_TIMEOUT,
        env={**os.environ, "LC_ALL": "C"},
        **_as_owner(),
    )
    if proc.returncode != 0:
        raise ClusterUnavailable(f"{Path(argv[0]).name} failed: {proc.stderr.strip()[-2000:]}")


def cluster_home(work: Path) -> tuple[Path, bool]:
    """An empty directory for a cluster: ``work/postgres``, or, as root, a new temporary
    directory the ``postgres`` user can reach (``work`` may not be).  The flag says
    whether the directory is outside ``work`` (its caller removes it)."""
    if not _as_owner():
        home = work / "postgres"
        home.mkdir()
        return home, False
    return Path(tempfile.mkdtemp(prefix="aexec-faults-postgres-")), True


def start_cluster(base: Path, *, ssl: ClusterSsl | None = None) -> PrivatePostgres:
    """Create and start a cluster in the empty directory ``base`` (serving SSL only, with
    ``ssl``)."""
    bin_dir = postgres_bin()
    owner = _as_owner()
    if owner:
        closed = [p for p in base.parents if not p.stat().st_mode & 0o001]
        if closed:
            raise ClusterUnavailable(
                f"the postgres user cannot reach {base} (no search permission on {closed[0]}): "
                "use a directory under a world-searchable one, such as the system's temp"
            )
        os.chown(base, owner["user"], owner["group"])
    cluster = PrivatePostgres(base, free_port(), bin_dir, ssl is not None)
    _run(
        [str(bin_dir / "initdb"), "-D", str(cluster.data), "-A", "trust", "-U", "postgres",
         "-E", "UTF8", "--locale=C", "--no-sync"],
        base,
    )  # fmt: skip
    options = (
        f"-p {cluster.port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c max_connections=200"
    )
    if ssl is not None:
        options += " " + _serve_ssl_only(cluster, ssl, owner)
    try:
        _run(
            [str(bin_dir / "pg_ctl"), "-D", str(cluster.data), "-l", str(cluster.log_file),
             "-o", options, "-w", "-t", str(int(CTL_TIMEOUT)), "start"],
            base,
        )  # fmt: skip
    except (ClusterUnavailable, subprocess.TimeoutExpired):
        stop_cluster(cluster)
        raise
    return cluster


def _serve_ssl_only(cluster: PrivatePostgres, ssl: ClusterSsl, owner: dict[str, Any]) -> str:
    """Put the certificate and key in the data directory (the key readable by the server
    alone, as PostgreSQL demands), allow TCP connections only over SSL, and return the
    server options that switch SSL on."""
    for source, name in ((ssl.cert, "server.crt"), (ssl.key, "server.key")):
        target = cluster.data / name
        shutil.copyfile(source, target)
        target.chmod(0o600)
        if owner:
            os.chown(target, owner["user"], owner["group"])
    (cluster.data / "pg_hba.conf").write_text(
        "local all all trust\n"
        "hostssl all all 127.0.0.1/32 trust\n"
        "hostnossl all all 127.0.0.1/32 reject\n"
    )
    return "-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"


def stop_cluster(cluster: PrivatePostgres) -> None:
    """Stop the cluster (fast shutdown), else SIGKILL its postmaster by pid."""
    pid_file = cluster.data / "postmaster.pid"
    if not pid_file.exists():
        return
    with contextlib.suppress(ClusterUnavailable, subprocess.TimeoutExpired):
        _run(
            [str(cluster.bin_dir / "pg_ctl"), "-D", str(cluster.data), "-m", "fast", "-w",
             "stop"],
            cluster.base,
        )  # fmt: skip
    if pid_file.exists():
        with contextlib.suppress(OSError, ValueError, IndexError):
            os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGKILL)


@contextlib.contextmanager
def private_cluster(base: Path, *, ssl: ClusterSsl | None = None) -> Iterator[PrivatePostgres]:
    """A cluster living in ``base`` for the ``with`` block, stopped at its end."""
    cluster = start_cluster(base, ssl=ssl)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)
