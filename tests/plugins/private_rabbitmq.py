"""A private RabbitMQ node for destructive fault tests: ``stop_app``/``start_app``,
``close_all_connections`` and broker settings (``consumer_timeout``) that must never be
applied to the RabbitMQ other tests share.

The session-scoped ``private_rabbitmq`` fixture boots a node of its own (``aexec-test-<random>
@localhost``) on free ports, with its data, logs, configuration and Erlang cookie in a
temporary directory, no plugins and no management listener; it stops the node (by name,
then by its own pids if that fails) at the end of the session.  A node boots in about 4 s.

It runs ``rabbitmq-server`` and ``rabbitmqctl`` from the directory the distribution installs
them in (``/usr/lib/rabbitmq/bin`` for the Debian package), not through the ``/usr/sbin``
wrappers, which switch to the ``rabbitmq`` user and its home when run as root.
``AEXEC_TEST_RABBITMQ_BIN`` names another directory.  When the node cannot be started the
tests that need it skip with the reason (fail under ``CI=true``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.plugins.services import port_open, service_unavailable

BOOT_TIMEOUT = 60.0
CTL_TIMEOUT = 30.0


@dataclass(frozen=True)
class PrivateRabbit:
    """A running private node: its AMQP URL and ``rabbitmqctl`` bound to it."""

    node: str
    port: int
    base: Path  # HOME (with the Erlang cookie), data, logs
    ctl_path: Path

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

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


def _rabbitmq_bin() -> Path | None:
    configured = os.environ.get("AEXEC_TEST_RABBITMQ_BIN")
    if configured:
        return Path(configured)
    found = shutil.which("rabbitmq-server")
    if found is None:
        return None
    # /usr/sbin/rabbitmq-server is a link to the wrapper, which sits beside the real scripts.
    return Path(found).resolve().parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _node_env(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
    env["HOME"] = str(base)  # the node and rabbitmqctl share the cookie written here
    # Ignore the distribution's rabbitmq-env.conf: it names the shared node.
    env["RABBITMQ_CONF_ENV_FILE"] = str(base / "rabbitmq-env.conf")
    return env


def _start_node(bin_dir: Path, base: Path) -> tuple[PrivateRabbit, subprocess.Popen[bytes]]:
    node = f"aexec-test-{uuid.uuid4().hex[:8]}@localhost"
    port, dist_port = _free_port(), _free_port()
    for sub in ("mnesia", "log"):
        (base / sub).mkdir()
    (base / "rabbitmq-env.conf").write_text("")
    (base / "enabled_plugins").write_text("[].\n")
    (base / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{port}\n")
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
    with open(base / "server.out", "wb") as out:
        server = subprocess.Popen(
            [str(bin_dir / "rabbitmq-server")],
            env=env,
            cwd=base,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the test run is not sent to the node
        )
    rabbit = PrivateRabbit(node, port, base, bin_dir / "rabbitmqctl")
    deadline = time.monotonic() + BOOT_TIMEOUT
    while not port_open("127.0.0.1", port, timeout=0.2):
        if server.poll() is not None or time.monotonic() > deadline:
            _stop_node(rabbit, server)
            output = (base / "server.out").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the private RabbitMQ node did not start:\n{output}")
        time.sleep(0.1)
    rabbit.ctl("await_startup")
    return rabbit, server


def _stop_node(rabbit: PrivateRabbit, server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            rabbit.ctl("stop")
        try:
            server.wait(timeout=CTL_TIMEOUT)
        except subprocess.TimeoutExpired:
            # Kill the node's own processes, by pid: the Erlang VM, then its start script.
            pid_file = rabbit.base / "node.pid"
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
            server.kill()
            server.wait(timeout=CTL_TIMEOUT)


@pytest.fixture(scope="session")
def private_rabbitmq() -> Iterator[PrivateRabbit]:
    """A RabbitMQ node of the test session's own, stopped and deleted at the end."""
    bin_dir = _rabbitmq_bin()
    if bin_dir is None or not (bin_dir / "rabbitmq-server").exists():
        service_unavailable("rabbitmq-server is not installed: no private RabbitMQ node")
        return
    base = Path(tempfile.mkdtemp(prefix="aexec-rabbitmq-"))
    try:
        try:
            rabbit, server = _start_node(bin_dir, base)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            service_unavailable(f"cannot start a private RabbitMQ node: {exc}")
            return
        try:
            yield rabbit
        finally:
            _stop_node(rabbit, server)
    finally:
        shutil.rmtree(base, ignore_errors=True)
