"""``aexec worker start | list | terminate`` and ``aexec coordinator``: long-lived processes
and their control through the broker."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from aexec.cli.common import (
    EXIT_OK,
    UsageError,
    broker_command,
    resolve_settings,
    run_async,
)

if TYPE_CHECKING:
    import asyncio

    from aexec.messages import WorkerInfo

log = logging.getLogger(__name__)


def cmd_worker_start(args: argparse.Namespace) -> int:
    from aexec.service import run_worker, with_connect_timeout

    queues = [q.strip() for item in args.queues for q in item.split(",") if q.strip()]
    if args.queues and not queues:
        raise UsageError("-Q needs at least one queue name (-Q q1,q2)")
    if args.name is not None and not args.name.strip():
        raise UsageError("-n needs a non-empty worker name")
    settings = with_connect_timeout(
        resolve_settings(args, concurrency=args.concurrency, metrics_port=args.metrics_port)
    )

    def serve(stop: asyncio.Event, ready: asyncio.Event) -> Coroutine[Any, Any, int]:
        return run_worker(
            settings,
            args.modules,
            queues=queues or None,
            name=args.name,
            pool=args.pool,
            stop=stop,
            ready=ready,
        )

    return run_async(serve_until_signalled(serve))


def cmd_coordinator(args: argparse.Namespace) -> int:
    from aexec.service import run_coordinator, with_connect_timeout

    if args.ui:
        from aexec.cli.ui import check_ui_options

        check_ui_options(args)
    settings = with_connect_timeout(resolve_settings(args, metrics_port=args.metrics_port))
    if args.ui:
        from aexec.cli.ui import coordinator_with_ui, ui_config

        config, shown = ui_config(args)

        def with_ui(stop: asyncio.Event, ready: asyncio.Event) -> Coroutine[Any, Any, int]:
            return coordinator_with_ui(settings, config, args, stop=stop, ready=ready, shown=shown)

        return run_async(serve_until_signalled(with_ui))

    def serve(stop: asyncio.Event, ready: asyncio.Event) -> Coroutine[Any, Any, int]:
        return run_coordinator(settings, stop=stop, ready=ready)

    return run_async(serve_until_signalled(serve))


async def serve_until_signalled(
    serve: Callable[[asyncio.Event, asyncio.Event], Coroutine[Any, Any, int]],
) -> int:
    """Run ``serve(stop, ready)``; SIGTERM and SIGINT set ``stop`` for a graceful exit.

    A broker that cannot be reached before ``ready`` is set is bad input (exit 2).
    """
    import asyncio
    import signal

    from aexec.errors import TransportError

    loop = asyncio.get_running_loop()
    stop, ready = asyncio.Event(), asyncio.Event()

    def on_signal(signum: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s: already stopping, steps in flight are finishing", signum.name)
        else:
            log.warning("%s: stopping (steps in flight finish first)", signum.name)
            stop.set()

    handled: list[signal.Signals] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
        except NotImplementedError:  # pragma: no cover - Windows: Ctrl-C interrupts
            continue
        handled.append(signum)
    try:
        return await serve(stop, ready)
    except TransportError as exc:
        if ready.is_set():
            raise
        raise UsageError(str(exc)) from exc
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)


def cmd_worker_list(args: argparse.Namespace) -> int:
    import math

    from aexec.service import find_workers, with_connect_timeout

    if not (args.wait > 0 and math.isfinite(args.wait)):
        raise UsageError("--wait must be a positive number of seconds")
    settings = with_connect_timeout(resolve_settings(args))
    workers = run_async(broker_command(find_workers(settings, wait=args.wait)))
    if args.json:
        from aexec.cli.display import dump_json

        for info in workers:
            sys.stdout.write(dump_json(info.to_dict()) + "\n")
    elif workers:
        sys.stdout.write(workers_table(workers) + "\n")
    else:
        sys.stderr.write(f"no worker answered within {args.wait:g} s\n")
    return EXIT_OK


def workers_table(workers: Sequence[WorkerInfo]) -> str:
    from aexec.cli.display import format_seconds, table

    rows = [
        [
            w.name,
            w.host,
            str(w.pid),
            ",".join(w.queues) or "-",
            ",".join(_served(w.steps)) or "-",
            str(w.in_flight),
            format_seconds(w.heartbeat_age),
        ]
        for w in workers
    ]
    headers = ["NAME", "HOST", "PID", "QUEUES", "STEPS", "IN-FLIGHT", "HEARTBEAT AGE"]
    return table(headers, rows)


def _served(steps: Sequence[str]) -> list[str]:
    """The steps a worker serves, each once: ``name@version`` for a versioned one."""
    from aexec.wire import VERSION_MARK

    versioned = {s.split(VERSION_MARK, 1)[0] for s in steps if VERSION_MARK in s}
    return [s for s in steps if s not in versioned]


def cmd_worker_terminate(args: argparse.Namespace) -> int:
    from aexec.service import terminate, with_connect_timeout

    if args.all == (args.name is not None):
        raise UsageError("name one worker to terminate, or pass --all (not both)")
    if args.name is not None and not args.name.strip():
        raise UsageError("the worker name must not be empty")
    settings = with_connect_timeout(resolve_settings(args))
    run_async(broker_command(terminate(settings, args.name)))
    who = "every worker" if args.all else f"worker {args.name}"
    sys.stdout.write(f"asked {who} to finish its steps in flight and exit\n")
    return EXIT_OK
