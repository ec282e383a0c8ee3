"""The ``aexec`` command line: ``run`` a pipeline file, inspect ``runs``.

Exit codes: 0 success, 1 a failed or cancelled run (or a backend failure), 2 bad input,
130 interrupted.  Bad input prints one line, ``aexec: error: <message>``, and no traceback
unless ``--traceback`` or ``AEXEC_TRACEBACK=1`` asks for one.

This module is imported on every invocation, ``--help`` included, so it imports only the
standard library at the top; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, TypeVar

if TYPE_CHECKING:
    import asyncio
    from types import ModuleType

    from aexec.config import Settings
    from aexec.dsl import Pipeline
    from aexec.executor import Executor
    from aexec.messages import WorkerInfo
    from aexec.store import RunRecord

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

log = logging.getLogger(__name__)

PROG = "aexec"
RUN_STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")


class UsageError(Exception):
    """Bad input found by the CLI itself; exits 2 with its message."""


# -- parser ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Reports a usage mistake on one line, as every other bad input is reported."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("aexec")
        except PackageNotFoundError:
            text = "unknown (not installed)"
        parser.exit(0, f"{PROG} {text}\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more on stderr: -v for INFO, -vv for DEBUG (default: warnings only)",
    )
    common.add_argument(
        "--traceback",
        action="store_true",
        help="show the traceback of an error (also: AEXEC_TRACEBACK=1)",
    )
    backends = _Parser(add_help=False)
    group = backends.add_argument_group("backends (flags > AEXEC_* environment > -c file)")
    group.add_argument("--broker", metavar="URL", help="memory:// (embedded) or amqp://...")
    group.add_argument("--store", metavar="URL", help="sqlite:///path or postgresql://...")
    group.add_argument("--objects", metavar="URL", help="file:///dir or s3://bucket/prefix")
    group.add_argument(
        "-c", "--config", metavar="FILE", help="a YAML file of settings (aexec.yaml)"
    )
    parents = [common, backends]

    parser = _Parser(
        prog=PROG,
        description="An asyncio-native distributed pipeline executor.",
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser(
        "run",
        parents=parents,
        help="compile and run a pipeline from a Python file",
        description="Compile and run a pipeline; embedded unless a broker is configured. "
        "Exit 0 if the run succeeded, 1 if it failed, 2 on bad input.",
    )
    run.add_argument("file", metavar="FILE", help="the Python file defining the pipeline")
    run.add_argument(
        "-P",
        "--pipeline",
        metavar="NAME",
        help="the pipeline to run, when the file defines several",
    )
    run.add_argument(
        "-p",
        "--param",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a pipeline parameter; VALUE is parsed as JSON when it can be (n=4, "
        "tags='[\"a\"]'), else taken as a string; repeat for several",
    )
    run.add_argument(
        "--priority", type=int, default=0, metavar="N", help="the run's priority (default 0)"
    )
    run.add_argument(
        "--json", action="store_true", help="print one JSON report of the run on stdout"
    )
    run.add_argument(
        "--remote",
        action="store_true",
        default=None,
        help="submit to a running `aexec coordinator` (through --broker) instead of "
        "coordinating the run in this process (also: AEXEC_REMOTE=1)",
    )
    run.set_defaults(handler=cmd_run)

    runs = commands.add_parser(
        "runs", help="inspect runs, their steps and event logs", description="Inspect runs."
    )
    runs_commands = runs.add_subparsers(
        title="commands", metavar="COMMAND", parser_class=_Parser, required=True
    )
    runs_list = runs_commands.add_parser(
        "list", parents=parents, help="list recent runs", description="List recent runs."
    )
    runs_list.add_argument(
        "--limit", type=int, default=20, metavar="N", help="at most N runs (default 20)"
    )
    runs_list.add_argument("--status", choices=RUN_STATUSES, help="only runs with this status")
    runs_list.add_argument(
        "--json", action="store_true", help="one JSON object per run, one per line"
    )
    runs_list.set_defaults(handler=cmd_runs_list)

    runs_show = runs_commands.add_parser(
        "show",
        parents=parents,
        help="show a run and its steps",
        description="Show a run and its steps.",
    )
    runs_show.add_argument("run_id", metavar="RUN_ID", help="a run id or a unique prefix of one")
    runs_show.add_argument(
        "--json", action="store_true", help="print the report `run --json` prints"
    )
    runs_show.set_defaults(handler=cmd_runs_show)

    runs_logs = runs_commands.add_parser(
        "logs",
        parents=parents,
        help="print a run's event log",
        description="Print a run's event log, oldest first.",
    )
    runs_logs.add_argument("run_id", metavar="RUN_ID", help="a run id or a unique prefix of one")
    runs_logs.add_argument("--json", action="store_true", help="one JSON event per line")
    runs_logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing events as they are recorded, until the run ends",
    )
    runs_logs.set_defaults(handler=cmd_runs_logs)

    _add_worker_commands(commands, common)

    coordinator = commands.add_parser(
        "coordinator",
        parents=parents,
        help="run a long-lived coordinator for runs submitted by library clients",
        description="Serve the runs that library clients submit through the broker until "
        "SIGTERM or Ctrl-C; runs in flight then get a grace period to finish, and the next "
        "coordinator resumes the rest.",
    )
    coordinator.set_defaults(handler=cmd_coordinator)
    return parser


def _add_worker_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    # -c is the concurrency of `worker start` (as in Celery): its config file is --config.
    def backends(*, objects: bool) -> argparse.ArgumentParser:
        parser = _Parser(add_help=False)
        group = parser.add_argument_group("backends (flags > AEXEC_* environment > --config)")
        group.add_argument("--broker", metavar="URL", help="amqp://... (workers need a broker)")
        if objects:
            group.add_argument("--objects", metavar="URL", help="file:///dir or s3://bucket/prefix")
        group.add_argument("--config", metavar="FILE", help="a YAML file of settings (aexec.yaml)")
        return parser

    worker = commands.add_parser(
        "worker", help="start, list and terminate workers", description="Manage workers."
    )
    worker_commands = worker.add_subparsers(
        title="commands", metavar="COMMAND", parser_class=_Parser, required=True
    )
    start = worker_commands.add_parser(
        "start",
        parents=[common, backends(objects=True)],
        help="serve the steps defined in modules or files",
        description="Serve the steps defined in the given modules until SIGTERM, Ctrl-C or "
        "`aexec worker terminate`; steps in flight finish first. With -v it logs "
        "'worker NAME ready: ...' once it consumes its queues.",
    )
    start.add_argument(
        "-A",
        "--app",
        dest="modules",
        metavar="MODULE_OR_FILE",
        action="append",
        required=True,
        help="a dotted module name or a .py file defining steps; repeat for several",
    )
    start.add_argument(
        "-Q",
        "--queues",
        metavar="Q1,Q2",
        action="append",
        default=[],
        help="serve only these queues (default: every queue named by the loaded steps)",
    )
    start.add_argument(
        "-c",
        "--concurrency",
        type=int,
        metavar="N",
        help="at most N steps in flight per queue (default 100, or AEXEC_CONCURRENCY)",
    )
    start.add_argument(
        "-n", "--name", metavar="NAME", help="the worker's name (default: HOST.PID.RANDOM)"
    )
    start.add_argument(
        "--pool",
        choices=("thread", "process"),
        default="thread",
        help="where sync steps run: a thread pool (default) or child processes",
    )
    start.set_defaults(handler=cmd_worker_start)

    listing = worker_commands.add_parser(
        "list",
        parents=[common, backends(objects=False)],
        help="list live workers",
        description="List the workers that answer a ping through the broker.",
    )
    listing.add_argument(
        "--json", action="store_true", help="one JSON object per worker, one per line"
    )
    listing.add_argument(
        "--wait",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="how long to collect answers (default 0.5)",
    )
    listing.set_defaults(handler=cmd_worker_list)

    terminate = worker_commands.add_parser(
        "terminate",
        parents=[common, backends(objects=False)],
        help="stop workers gracefully",
        description="Ask a worker (or every worker) to finish its in-flight steps and exit.",
    )
    terminate.add_argument("name", metavar="NAME", nargs="?", help="the worker to stop")
    terminate.add_argument("--all", action="store_true", help="stop every worker")
    terminate.set_defaults(handler=cmd_worker_terminate)


# -- entry point -----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    configure_logging(args.verbose)
    show_traceback = args.traceback or os.environ.get("AEXEC_TRACEBACK", "") not in ("", "0")
    try:
        return handler(args)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`aexec runs logs x | head`): stop quietly.
        _silence_stdout()
        return EXIT_FAILED
    except Exception as exc:
        return _report_error(exc, show_traceback)


def configure_logging(verbosity: int) -> None:
    """Log to stderr: warnings by default, INFO with -v, DEBUG with -vv."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        force=True,
    )
    # aiormq logs every failed connection attempt as an ERROR of its own; the AMQP transport
    # reports the same failure as one aexec error, so it is shown only with -v.
    quiet = logging.CRITICAL if verbosity <= 0 else logging.NOTSET
    logging.getLogger("aiormq").setLevel(quiet)
    # aio-pika logs each channel it restores after a reconnect as an ERROR; the transport
    # recovers from those, so they are noise unless asked for.
    logging.getLogger("aio_pika.tools").setLevel(quiet)


def _report_error(exc: Exception, show_traceback: bool) -> int:
    from aexec.errors import AexecError, BackendError

    if show_traceback:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, UsageError) or (
        isinstance(exc, AexecError) and not isinstance(exc, BackendError)
    ):
        message, code = str(exc), EXIT_USAGE
    elif isinstance(exc, AexecError):
        message, code = str(exc), EXIT_FAILED
    else:
        message, code = f"unexpected {type(exc).__name__}: {exc}", EXIT_FAILED
        if not show_traceback:
            message += " (run with --traceback to see where)"
    sys.stderr.write(f"{PROG}: error: {_one_line(_relative_paths(message))}\n")
    return code


def _relative_paths(message: str) -> str:
    """Shorten absolute paths under the current directory, as in ``/cwd/pipe.py:3: ...``."""
    cwd = os.getcwd().rstrip(os.sep) + os.sep
    return message.replace(cwd, "") if len(cwd) > 1 else message


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


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
    the config file."""
    from aexec.config import Settings

    backends = {key: getattr(args, key, None) for key in ("broker", "store", "objects", "remote")}
    return Settings.resolve({**backends, **flags}, config_file=args.config)


# -- run -------------------------------------------------------------------------------


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``["n=4", "name=bob"]`` → ``{"n": 4, "name": "bob"}``: JSON when it parses, else text."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"malformed parameter {item!r}: expected -p KEY=VALUE")
        try:
            params[key] = json.loads(text)
        except ValueError:
            params[key] = text
    return params


def choose_pipeline(module: ModuleType, file: str, name: str | None) -> Pipeline:
    """The pipeline ``-P NAME`` names, or the file's only one."""
    from aexec.dsl import Pipeline
    from aexec.loader import find_pipelines

    pipelines = find_pipelines(module)
    names = ", ".join(sorted(pipelines))
    if name is None:
        if len(pipelines) == 1:
            return next(iter(pipelines.values()))
        if not pipelines:
            raise UsageError(f"{file} defines no pipeline (decorate a function with @pipeline)")
        raise UsageError(f"{file} defines several pipelines ({names}): choose one with -P NAME")
    if name in pipelines:
        return pipelines[name]
    by_variable = getattr(module, name, None)
    if isinstance(by_variable, Pipeline):
        return by_variable
    raise UsageError(f"no pipeline named {name!r} in {file} (pipelines: {names or 'none'})")


def cmd_run(args: argparse.Namespace) -> int:
    from aexec.loader import load_file
    from aexec.plan import MAX_PRIORITY
    from aexec.service import with_connect_timeout

    params = parse_params(args.param)
    if not 0 <= args.priority <= MAX_PRIORITY:
        raise UsageError(f"--priority must be an integer 0..{MAX_PRIORITY}")
    settings = with_connect_timeout(resolve_settings(args))
    out = sys.stdout
    # Only the result or the report goes to stdout: whatever user code prints, on import
    # or in a step, goes to stderr.
    sys.stdout = sys.stderr
    cancelled: list[str] = []
    try:
        module = load_file(args.file)
        pipeline = choose_pipeline(module, args.file, args.pipeline)
        return run_async(_run(pipeline, params, settings, args, out, cancelled))
    except KeyboardInterrupt:
        what = f"run {cancelled[0][:8]} cancelled" if cancelled else "no run started"
        sys.stderr.write(f"{PROG}: interrupted: {what}\n")
        return EXIT_INTERRUPTED
    finally:
        sys.stdout = out


async def _run(
    pipeline: Pipeline,
    params: dict[str, Any],
    settings: Settings,
    args: argparse.Namespace,
    out: TextIO,
    cancelled: list[str],
) -> int:
    """Submit and follow the run; on cancellation (Ctrl-C) cancel it, note its id, re-raise."""
    import asyncio

    from aexec.cli.display import (
        dump_json,
        open_display,
        run_summary_line,
        step_failure_lines,
    )
    from aexec.cli.report import jsonable, run_report
    from aexec.errors import AexecError, DefinitionError, TransportError
    from aexec.executor import Executor
    from aexec.types import RunStatus

    async with Executor(settings) as ex:
        try:
            run = await ex.submit(pipeline, priority=args.priority, **params)
        except TransportError as exc:
            # The broker cannot be used: nothing was submitted (bad input, as for `worker`).
            raise UsageError(str(exc)) from exc
        except AexecError:
            raise
        except Exception as exc:
            # The pipeline body raised while it was compiled: the user's mistake.
            raise DefinitionError(
                f"{_raised_where(exc, pipeline)}: pipeline {pipeline.name!r} raised "
                f"{type(exc).__name__} while compiling: {exc}"
            ) from exc
        try:
            display = open_display(sys.stderr, title=pipeline.name, total=len(run.plan))
            with display:
                if display.live:
                    async for event in run.events():
                        display.update(event)
            record = await run.wait()
        except asyncio.CancelledError:
            await run.cancel()
            cancelled.append(run.run_id)
            raise
        steps = await run.steps()
        succeeded = record.status is RunStatus.SUCCEEDED
        result = await run.result() if succeeded else None

    if args.json:
        _write_line(out, dump_json(run_report(record, steps, result)))
    else:
        if result is not None:
            _write_line(out, dump_json(jsonable(result)))
        failures = step_failure_lines(steps)
        if not failures and not succeeded and record.error:
            failures = [_one_line(record.error)]
        for line in [*failures, run_summary_line(record, steps)]:
            sys.stderr.write(line + "\n")
    return EXIT_OK if succeeded else EXIT_FAILED


def _raised_where(exc: BaseException, pipeline: Pipeline) -> str:
    """``file:line`` of the innermost frame of ``exc`` in the pipeline's file."""
    file = pipeline.where.rpartition(":")[0]
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == file]
    return f"{file}:{frames[-1].lineno}" if frames else pipeline.where


def _write_line(stream: TextIO, text: str) -> None:
    stream.write(text + "\n")
    stream.flush()


# -- runs ------------------------------------------------------------------------------


def cmd_runs_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    return run_async(_runs_list(resolve_settings(args), args))


async def _runs_list(settings: Settings, args: argparse.Namespace) -> int:
    from aexec.cli.display import dump_json, runs_table
    from aexec.cli.report import run_summary
    from aexec.executor import Executor
    from aexec.types import RunStatus

    status = RunStatus(args.status) if args.status else None
    async with Executor(settings) as ex:
        runs = await ex.list_runs(limit=args.limit, status=status)
    if args.json:
        for r in runs:
            sys.stdout.write(dump_json(run_summary(r)) + "\n")
    elif runs:
        sys.stdout.write(runs_table(runs) + "\n")
    else:
        sys.stderr.write("no runs\n")
    return EXIT_OK


def cmd_runs_show(args: argparse.Namespace) -> int:
    return run_async(_runs_show(resolve_settings(args), args))


async def _runs_show(settings: Settings, args: argparse.Namespace) -> int:
    from aexec.cli.display import dump_json, run_details
    from aexec.cli.report import jsonable, run_report
    from aexec.executor import Executor
    from aexec.types import RunStatus

    async with Executor(settings) as ex:
        record = await _find_run(ex, args.run_id)
        steps = await ex.get_steps(record.run_id)
        result = await ex.load_result(record) if record.status is RunStatus.SUCCEEDED else None
    if args.json:
        sys.stdout.write(dump_json(run_report(record, steps, result)) + "\n")
    else:
        shown = None if result is None else dump_json(jsonable(result))
        sys.stdout.write(run_details(record, steps, shown) + "\n")
    return EXIT_OK


def cmd_runs_logs(args: argparse.Namespace) -> int:
    return run_async(_runs_logs(resolve_settings(args), args))


async def _runs_logs(settings: Settings, args: argparse.Namespace) -> int:
    from aexec.cli.display import dump_json, event_line
    from aexec.executor import Executor

    page = 1000
    async with Executor(settings) as ex:
        record = await _find_run(ex, args.run_id)
        after = 0
        while True:
            events = await ex.get_events(record.run_id, after=after, limit=page)
            for event in events:
                line = dump_json(event.to_dict()) if args.json else event_line(event)
                sys.stdout.write(line + "\n")
            if events:
                after = events[-1].seq
            if len(events) < page:
                break
        if args.follow:
            follower = ex.store.follow(record.run_id, after=after)
            try:
                async for event in follower:
                    line = dump_json(event.to_dict()) if args.json else event_line(event)
                    sys.stdout.write(line + "\n")
                    sys.stdout.flush()
            finally:
                await follower.aclose()  # type: ignore[attr-defined]
    return EXIT_OK


async def _find_run(ex: Executor, run_id: str) -> RunRecord:
    from aexec.errors import StoreError

    try:
        record = await ex.get_run(run_id)
    except StoreError as exc:  # an ambiguous prefix
        raise UsageError(str(exc)) from exc
    if record is None:
        hint = " (a prefix needs at least 4 characters)" if len(run_id) < 4 else ""
        raise UsageError(f"no run matches {run_id!r}{hint}")
    return record


# -- worker, coordinator ---------------------------------------------------------------


def cmd_worker_start(args: argparse.Namespace) -> int:
    from aexec.service import run_worker, with_connect_timeout

    queues = [q.strip() for item in args.queues for q in item.split(",") if q.strip()]
    if args.queues and not queues:
        raise UsageError("-Q needs at least one queue name (-Q q1,q2)")
    if args.name is not None and not args.name.strip():
        raise UsageError("-n needs a non-empty worker name")
    settings = with_connect_timeout(resolve_settings(args, concurrency=args.concurrency))

    def serve(stop: asyncio.Event, ready: asyncio.Event) -> Coroutine[Any, Any, int]:
        return run_worker(
            settings,
            args.modules,
            queues=queues or None,
            concurrency=settings.concurrency,
            name=args.name,
            pool=args.pool,
            stop=stop,
            ready=ready,
        )

    return run_async(_serve_until_signalled(serve))


def cmd_coordinator(args: argparse.Namespace) -> int:
    from aexec.service import run_coordinator, with_connect_timeout

    settings = with_connect_timeout(resolve_settings(args))

    def serve(stop: asyncio.Event, ready: asyncio.Event) -> Coroutine[Any, Any, int]:
        return run_coordinator(settings, stop=stop, ready=ready)

    return run_async(_serve_until_signalled(serve))


async def _serve_until_signalled(
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
    workers = run_async(_broker_command(find_workers(settings, wait=args.wait)))
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
            str(w.in_flight),
            format_seconds(w.heartbeat_age),
        ]
        for w in workers
    ]
    return table(["NAME", "HOST", "PID", "QUEUES", "IN-FLIGHT", "HEARTBEAT AGE"], rows)


def cmd_worker_terminate(args: argparse.Namespace) -> int:
    from aexec.service import terminate, with_connect_timeout

    if args.all == (args.name is not None):
        raise UsageError("name one worker to terminate, or pass --all (not both)")
    if args.name is not None and not args.name.strip():
        raise UsageError("the worker name must not be empty")
    settings = with_connect_timeout(resolve_settings(args))
    run_async(_broker_command(terminate(settings, args.name)))
    who = "every worker" if args.all else f"worker {args.name}"
    sys.stdout.write(f"asked {who} to finish its steps in flight and exit\n")
    return EXIT_OK


async def _broker_command(command: Coroutine[Any, Any, T]) -> T:
    """A short command over the broker: a broker it cannot use is bad input (exit 2)."""
    from aexec.errors import TransportError

    try:
        return await command
    except TransportError as exc:
        raise UsageError(str(exc)) from exc
