"""A private RabbitMQ node for destructive faults: ``stop_app``/``start_app``,
``close_all_connections``, tracing and broker settings (``consumer_timeout``) that must
never be applied to the RabbitMQ other people share.

:func:`start_node` boots a node of its own (``<prefix>-<random>@localhost``) on free ports,
with its data, logs, configuration and Erlang cookie in a directory of the caller's, no
plugins and no management listener (and, given :class:`NodeTls`, a TLS listener besides the
plain one); :func:`stop_node` stops it (by name, then by its own pids if that fails).  A
node boots in about 4 s.  The fault campaign and the test suite's
``private_rabbitmq`` fixture (``tests/plugins/private_rabbitmq.py``) both use it.

It runs ``rabbitmq-server`` and ``rabbitmqctl`` from the directory the distribution installs
them in (``/usr/lib/rabbitmq/bin`` for the Debian package), not through the ``/usr/sbin``
wrappers, which switch to the ``rabbitmq`` user and its home when run as root.
``AEXEC_TEST_RABBITMQ_BIN`` names another directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.faults.net import free_port, port_open

BOOT_TIMEOUT = 60.0
CTL_TIMEOUT = 30.0


class NodeUnavailable(RuntimeError):
    """RabbitMQ is not installed here, or a private node would not start."""


@dataclass(frozen=True)
class NodeTls:
    """PEM files for a node's TLS listener: the CA, the server's certificate and its key.
    Clients are not asked for certificates."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class PrivateRabbit:
    """A running private node: its AMQP URL and ``rabbitmqctl`` bound to it."""

    node: str
    port: int
    base: Path  # HOME (with the Erlang cookie), data, logs
    ctl_path: Path
    tls_port: int | None = None  # the TLS listener, when started with one

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def tls_url(self) -> str:
        """``amqps://`` to the TLS listener (no CA named: add ``?cafile=``)."""
        if self.tls_port is None:
            raise RuntimeError("this node has no TLS listener")
        return f"amqps://guest:guest@127.0.0.1:{self.tls_port}/"

    @property
    def log_file(self) -> Path:
        """The node's log (``rabbitmqctl`` actions, closed channels, timeouts)."""
        return self.base / "log" / f"{self.node}.log"

    def ctl(self, *args: str, timeout: float = CTL_TIMEOUT) -> str:
        """``rabbitmqctl -n NODE ARGS...``; its stdout, or a failure with its stderr."""
        proc = subprocess.run(
            [str(self.ctl_path), "-q", "-n", self.node, *args],
            env=_node_env(self.base),
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def eval(self, expression: str) -> str:
        """Evaluate an Erlang expression on the node (``rabbitmqctl eval``)."""
        return self.ctl("eval", expression)

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup")

    def close_all_connections(self, reason: str = "aexec test: forced close") -> None:
        self.ctl("close_all_connections", reason)

    def list_queues(self, *columns: str) -> list[list[str]]:
        """``rabbitmqctl list_queues COLUMNS...``: one row of strings per queue."""
        out = self.ctl("list_queues", "--no-table-headers", *columns)
        return [line.split("\t") for line in out.splitlines() if line.strip()]

    @contextlib.contextmanager
    def rabbit_env(self, **values: int) -> Iterator[None]:
        """Set ``rabbit`` application variables (read by channels opened afterwards), and
        restore them on exit."""
        previous = {key: self.eval(f"application:get_env(rabbit, {key}).") for key in values}
        try:
            for key, value in values.items():
                self.eval(f"application:set_env(rabbit, {key}, {int(value)}).")
            yield
        finally:
            for key, before in previous.items():
                if before.startswith("{ok,"):
                    self.eval(f"application:set_env(rabbit, {key}, {before[4:-1]}).")
                else:
                    self.eval(f"application:unset_env(rabbit, {key}).")


def rabbitmq_bin() -> Path:
    """The directory of ``rabbitmq-server`` and ``rabbitmqctl``; NodeUnavailable if none."""
    configured = os.environ.get("AEXEC_TEST_RABBITMQ_BIN")
    if configured:
        found = Path(configured)
    else:
        server = shutil.which("rabbitmq-server")
        if server is None:
            raise NodeUnavailable("rabbitmq-server is not installed: no private RabbitMQ node")
        # /usr/sbin/rabbitmq-server is a link to the wrapper, beside the real scripts.
        found = Path(server).resolve().parent
    if not (found / "rabbitmq-server").exists():
        raise NodeUnavailable(f"no rabbitmq-server in {found}: no private RabbitMQ node")
    return found


def _node_env(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
    env["HOME"] = str(base)  # the node and rabbitmqctl share the cookie written here
    # Ignore the distribution's rabbitmq-env.conf: it names the shared node.
    env["RABBITMQ_CONF_ENV_FILE"] = str(base / "rabbitmq-env.conf")
    return env


def start_node(
    base: Path,
    *,
    bin_dir: Path | None = None,
    name: str = "aexec-test",
    tls: NodeTls | None = None,
) -> tuple[PrivateRabbit, subprocess.Popen[bytes]]:
    """Boot a node whose files live in the empty directory ``base``; returns its handle and
    its server process, once it accepts AMQP connections (and TLS ones, with ``tls``).
    NodeUnavailable if it cannot."""
    bin_dir = bin_dir or rabbitmq_bin()
    node = f"{name}-{uuid.uuid4().hex[:8]}@localhost"
    port, dist_port = free_port(), free_port()
    tls_port = None if tls is None else free_port()
    for sub in ("mnesia", "log"):
        (base / sub).mkdir()
    (base / "rabbitmq-env.conf").write_text("")
    (base / "enabled_plugins").write_text("[].\n")
    config = f"listeners.tcp.default = 127.0.0.1:{port}\n"
    if tls is not None:
        config += (
            f"listeners.ssl.default = 127.0.0.1:{tls_port}\n"
            f"ssl_options.cacertfile = {tls.ca}\n"
            f"ssl_options.certfile = {tls.cert}\n"
            f"ssl_options.keyfile = {tls.key}\n"
            "ssl_options.verify = verify_none\n"
            "ssl_options.fail_if_no_peer_cert = false\n"
        )
    (base / "rabbitmq.conf").write_text(config)
    env = _node_env(base)
    env.update(
        RABBITMQ_NODENAME=node,
        RABBITMQ_NODE_PORT=str(port),
        RABBITMQ_DIST_PORT=str(dist_port),
        RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
        RABBITMQ_LOG_BASE=str(base / "log"),
        RABBITMQ_CONFIG_FILE=str(base / "rabbitmq.conf"),
        RABBITMQ_ADVANCED_CONFIG_FILE=str(base / "advanced.config"),
        RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
        RABBITMQ_PID_FILE=str(base / "node.pid"),
    )
    try:
        with open(base / "server.out", "wb") as out:
            server = subprocess.Popen(
                [str(bin_dir / "rabbitmq-server")],
                env=env,
                cwd=base,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the caller is not sent to the node
            )
    except OSError as exc:
        raise NodeUnavailable(f"cannot start a private RabbitMQ node: {exc}") from exc
    rabbit = PrivateRabbit(node, port, base, bin_dir / "rabbitmqctl", tls_port)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        ports = [p for p in (port, tls_port) if p is not None]
        while not all(port_open("127.0.0.1", p, timeout=0.2) for p in ports):
            if server.poll() is not None or time.monotonic() > deadline:
                output = (base / "server.out").read_text(errors="replace")[-2000:]
                raise NodeUnavailable(f"the private RabbitMQ node did not start:\n{output}")
            time.sleep(0.1)  # poll interval of a bounded wait
        rabbit.ctl("await_startup")
    except BaseException as exc:
        stop_node(rabbit, server)
        if isinstance(exc, RuntimeError | subprocess.TimeoutExpired) and not isinstance(
            exc, NodeUnavailable
        ):
            raise NodeUnavailable(f"the private RabbitMQ node did not start: {exc}") from exc
        raise
    return rabbit, server


def stop_node(rabbit: PrivateRabbit, server: subprocess.Popen[bytes]) -> None:
    """Stop the node: ``rabbitmqctl stop``, else SIGKILL its Erlang VM and start script."""
    if server.poll() is None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            rabbit.ctl("stop")
        try:
            server.wait(timeout=CTL_TIMEOUT)
        except subprocess.TimeoutExpired:
            pid_file = rabbit.base / "node.pid"
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
            server.kill()
            server.wait(timeout=CTL_TIMEOUT)


@contextlib.contextmanager
def private_node(
    base: Path, *, name: str = "aexec-test", tls: NodeTls | None = None
) -> Iterator[PrivateRabbit]:
    """A node living in ``base`` for the ``with`` block, stopped at its end."""
    rabbit, server = start_node(base, name=name, tls=tls)
    try:
        yield rabbit
    finally:
        stop_node(rabbit, server)
