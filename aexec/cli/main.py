"""The ``aexec`` command line: the parser and the entry point.

Commands: ``run`` a pipeline file (:mod:`aexec.cli.run`); ``runs list | show | logs |
prune`` to inspect and delete runs in the store (:mod:`aexec.cli.runs`); ``worker start |
list | terminate`` and ``coordinator``, the long-lived processes and their control
(:mod:`aexec.cli.serve`); ``dlq list | replay``, the dead letters (:mod:`aexec.cli.dlq`).

Exit codes: 0 success, 1 a failed or cancelled run (or a backend failure), 2 bad input,
130 interrupted.  Bad input prints one line, ``aexec: error: <message>``, and no traceback
unless ``--traceback`` or ``AEXEC_TRACEBACK=1`` asks for one.

This module is imported on every invocation, ``--help`` included, so it and the command
modules import only the standard library at the top; each command imports what it needs
when it runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from aexec.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PROG,
    RUN_STATUSES,
    UsageError,
    one_line,
    run_id_argument,
)
from aexec.cli.dlq import cmd_dlq_list, cmd_dlq_replay
from aexec.cli.run import cmd_run, cmd_runs_rerun
from aexec.cli.runs import (
    cmd_runs_cancel,
    cmd_runs_list,
    cmd_runs_logs,
    cmd_runs_prune,
    cmd_runs_show,
)
from aexec.cli.serve import (
    cmd_coordinator,
    cmd_worker_list,
    cmd_worker_start,
    cmd_worker_terminate,
)
from aexec.cli.ui import add_ui_options, cmd_ui
from aexec.config import COORDINATOR_METRICS_PORT, WORKER_METRICS_PORT

log = logging.getLogger(__name__)


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
        "--tag",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="label the run (runs list --tag and the UI find runs by tags); repeat for several",
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
    runs_list.add_argument("--pipeline", metavar="NAME", help="only runs of this pipeline")
    runs_list.add_argument("--tag", metavar="KEY=VALUE", help="only runs with this tag")
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
    runs_show.add_argument(
        "run_id", metavar="RUN_ID", type=run_id_argument, help="a run id or a unique prefix of one"
    )
    runs_show.add_argument(
        "--json", action="store_true", help="print the report `run --json` prints"
    )
    runs_show.set_defaults(handler=cmd_runs_show)

    runs_logs = runs_commands.add_parser(
        "logs",
        parents=parents,
        help="print a run's event log",
        description="Print a run's event log, oldest first: steps' progress, log records, "
        "output lines and custom events among them.",
    )
    runs_logs.add_argument(
        "run_id", metavar="RUN_ID", type=run_id_argument, help="a run id or a unique prefix of one"
    )
    runs_logs.add_argument("--json", action="store_true", help="one JSON event per line")
    runs_logs.add_argument(
        "--step",
        metavar="KEY",
        help="only the events of this step (its progress, logs, output lines, events...)",
    )
    runs_logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing events as they are recorded, until the run ends",
    )
    runs_logs.set_defaults(handler=cmd_runs_logs)

    runs_cancel = runs_commands.add_parser(
        "cancel",
        parents=parents,
        help="cancel a run",
        description="Cancel a run, whichever coordinator drives it (or starts it later): "
        "its queued steps never start, running ones are cancelled, and it ends `cancelled`. "
        "Waits for the run to end (exit 0), unless --no-wait; a run that ended already is "
        "a no-op (exit 0).",
    )
    runs_cancel.add_argument(
        "run_id", metavar="RUN_ID", type=run_id_argument, help="a run id or a unique prefix of one"
    )
    runs_cancel.add_argument("--reason", metavar="TEXT", help="why, kept in the run's log")
    runs_cancel.add_argument(
        "--no-wait", action="store_true", help="return once the cancel request is recorded"
    )
    runs_cancel.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the run to end (default 60; exit 1 if it has not)",
    )
    runs_cancel.set_defaults(handler=cmd_runs_cancel)

    runs_rerun = runs_commands.add_parser(
        "rerun",
        parents=parents,
        help="run a run again, or from its failure",
        description="Start a new run of a run's pipeline, recording the run as its parent, "
        "and follow it as `run` does (exit 0 if it succeeded, 1 if not, 2 on bad input).  "
        "With --from-failure, the steps that succeeded keep their outputs and only the "
        "others and their dependents run.  New parameters, and the embedded mode, need "
        "the pipeline's file (--file).",
    )
    runs_rerun.add_argument(
        "run_id", metavar="RUN_ID", type=run_id_argument, help="a run id or a unique prefix of one"
    )
    runs_rerun.add_argument(
        "--from-failure",
        action="store_true",
        help="reuse the outputs of the steps that succeeded; run only the rest",
    )
    runs_rerun.add_argument(
        "-p",
        "--param",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="change a pipeline parameter (needs --file); parsed as for `run`",
    )
    runs_rerun.add_argument(
        "--file", metavar="FILE", help="the Python file defining the run's pipeline"
    )
    runs_rerun.add_argument(
        "-P", "--pipeline", metavar="NAME", help="the pipeline in FILE, if it has several"
    )
    runs_rerun.add_argument(
        "--priority", type=int, metavar="N", help="the new run's priority (default: the run's)"
    )
    runs_rerun.add_argument(
        "--tag",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="the new run's tags (default: the run's)",
    )
    runs_rerun.add_argument(
        "--json", action="store_true", help="print one JSON report of the new run on stdout"
    )
    runs_rerun.set_defaults(handler=cmd_runs_rerun)

    runs_prune = runs_commands.add_parser(
        "prune",
        parents=parents,
        help="delete old finished runs with their outputs",
        description="Delete the runs that finished (succeeded, failed or cancelled) more than "
        "DURATION ago: their outputs in the object store, then their rows, steps and events. "
        "A run still pending or running is never deleted.  Prints each run it deletes.",
    )
    runs_prune.add_argument(
        "--older-than",
        required=True,
        metavar="DURATION",
        help="how long ago a run must have finished: 30d, 12h, 90m, 45s",
    )
    runs_prune.add_argument(
        "--dry-run", action="store_true", help="only list the runs that would be deleted"
    )
    runs_prune.add_argument("--json", action="store_true", help="one JSON object per run")
    runs_prune.set_defaults(handler=cmd_runs_prune)

    _add_worker_commands(commands, common)
    _add_dlq_commands(commands, common)

    coordinator = commands.add_parser(
        "coordinator",
        parents=parents,
        help="run a long-lived coordinator for runs submitted by library clients",
        description="Serve the runs that library clients submit through the broker until "
        "SIGTERM or Ctrl-C; runs in flight then get a grace period to finish, and the next "
        "coordinator resumes the rest.",
    )
    add_ui_options(coordinator, flag=True)
    _add_metrics_port(coordinator, COORDINATOR_METRICS_PORT)
    coordinator.set_defaults(handler=cmd_coordinator)

    ui = commands.add_parser(
        "ui",
        parents=parents,
        help="serve the web UI and its JSON API",
        description="Serve the web UI (runs, their graphs, timelines and logs, workers, "
        "queues; launch and cancel runs) and its JSON API under /api/, until SIGTERM or "
        "Ctrl-C.  Actions need the bearer token AEXEC_UI_TOKEN; without it, a token is "
        "generated and shown in the URL printed at start.",
    )
    add_ui_options(ui, flag=False)
    ui.set_defaults(handler=cmd_ui)
    return parser


def _add_metrics_port(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help=f"serve /metrics, /healthz and /readyz on this port (default {default}, or "
        "AEXEC_METRICS_PORT; 0: off)",
    )


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
    _add_metrics_port(start, WORKER_METRICS_PORT)
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


def _add_dlq_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    backends = _Parser(add_help=False)
    group = backends.add_argument_group("backends (flags > AEXEC_* environment > -c file)")
    group.add_argument(
        "--broker", metavar="URL", help="amqp://... (dead letters are on the broker)"
    )
    group.add_argument(
        "-c", "--config", metavar="FILE", help="a YAML file of settings (aexec.yaml)"
    )
    dlq = commands.add_parser(
        "dlq",
        help="list and replay dead letters",
        description="The dead-letter queue: messages aexec refused (malformed, unsigned, of "
        "an unknown kind), kept at most 14 days and 10,000 messages.",
    )
    dlq_commands = dlq.add_subparsers(
        title="commands", metavar="COMMAND", parser_class=_Parser, required=True
    )
    listing = dlq_commands.add_parser(
        "list",
        parents=[common, backends],
        help="show the dead letters, oldest first (they stay queued)",
        description="Show the dead letters, oldest first: id, age, the queue each came "
        "from, its message kind, run and step (read without checking a signature), and "
        "why it was dead-lettered.  Nothing is taken off the queue.",
    )
    listing.add_argument("--limit", type=int, metavar="N", help="at most N dead letters")
    listing.add_argument(
        "--json", action="store_true", help="one JSON object per dead letter, one per line"
    )
    listing.set_defaults(handler=cmd_dlq_list)
    replay = dlq_commands.add_parser(
        "replay",
        parents=[common, backends],
        help="publish dead letters back to the queues they came from",
        description="Publish dead letters back to the queue each came from, as they were "
        "(a signed message must still verify there); prints what it did.  Exit 1 if one "
        "could not be replayed or an id names no dead letter.",
    )
    replay.add_argument("ids", metavar="ID", nargs="*", help="dead letters to replay")
    replay.add_argument("--all", action="store_true", help="replay every dead letter")
    replay.set_defaults(handler=cmd_dlq_replay)


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
    """Log to stderr: warnings by default, INFO with -v, DEBUG with -vv; credentials of the
    resolved settings masked in every line."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    from aexec.log import RedactingFilter, StepContextFilter

    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s%(step_context)s: %(message)s",
        force=True,
    )
    # Secrets are added when settings are resolved (aexec.cli.common.resolve_settings),
    # and so is the level of the steps' records a worker records (which may be lower).
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)
        handler.addFilter(StepContextFilter())
        handler.addFilter(RedactingFilter())
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
    sys.stderr.write(f"{PROG}: error: {one_line(_relative_paths(message))}\n")
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
