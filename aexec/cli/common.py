"""What every command of the CLI shares: exit codes, the usage error, the event loop, and
settings from flags.  Imported on every invocation: standard library only at the top."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

if TYPE_CHECKING:
    import asyncio

    from aexec.config import Settings

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

PROG = "aexec"
RUN_STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")


class UsageError(Exception):
    """Bad input found by the CLI itself; exits 2 with its message."""


def run_id_argument(text: str) -> str:
    """The ``type=`` of a RUN_ID argument: an id (or prefix) that could never name a run is
    bad input, one line and exit 2, before any backend is opened."""
    from aexec.errors import CodecError
    from aexec.wire import check_run_id

    try:
        return check_run_id(text)
    except CodecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_tag(text: str) -> tuple[str, str]:
    """``"team=data"`` → ``("team", "data")``; a UsageError without a ``=`` or a key."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"malformed tag {text!r}: expected --tag KEY=VALUE")
    return key.strip(), value


def one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def write_line(stream: TextIO, text: str) -> None:
    stream.write(text + "\n")
    stream.flush()


def run_async(main_coro: Coroutine[Any, Any, T]) -> T:
    """Run ``main_coro`` on uvloop when it is installed, on the default loop otherwise.

    Ctrl-C cancels ``main_coro`` (which gets to clean up) and then raises KeyboardInterrupt.
    """
    import asyncio

    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main_coro)


def resolve_settings(args: argparse.Namespace, **flags: Any) -> Settings:
    """Settings from the backend flags ``args`` has (and ``flags``), the environment and
    the config file; from now on the log masks the credentials they hold."""
    import os

    from aexec.config import Settings
    from aexec.log import hide_secrets, let_through

    backends = {key: getattr(args, key, None) for key in ("broker", "store", "objects", "remote")}
    settings = Settings.resolve({**backends, **flags}, config_file=args.config)
    aws = [os.environ.get(name, "") for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")]
    hide_secrets([*settings.secret_values(), *aws])
    let_through(settings.step_log_level)
    return settings


async def broker_command(command: Coroutine[Any, Any, T]) -> T:
    """A short command over the broker: a broker it cannot use is bad input (exit 2)."""
    from aexec.errors import TransportError

    try:
        return await command
    except TransportError as exc:
        raise UsageError(str(exc)) from exc
