"""``aexec run``: compile a pipeline file and run it; ``aexec runs rerun``: run a run
again, from its failure or from the start."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from aexec.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    PROG,
    UsageError,
    one_line,
    parse_tag,
    resolve_settings,
    run_async,
    write_line,
)

if TYPE_CHECKING:
    from types import ModuleType

    from aexec.config import Settings
    from aexec.dsl import Pipeline
    from aexec.executor import Executor
    from aexec.run import Run

log = logging.getLogger(__name__)


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
    from aexec.service import with_connect_timeout
    from aexec.wire import MAX_PRIORITY

    params = parse_params(args.param)
    tags = dict(parse_tag(text) for text in args.tag)
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
        return run_async(_run(pipeline, params, tags, settings, args, out, cancelled))
    except KeyboardInterrupt:
        what = f"run {cancelled[0][:8]} cancelled" if cancelled else "no run started"
        sys.stderr.write(f"{PROG}: interrupted: {what}\n")
        return EXIT_INTERRUPTED
    finally:
        sys.stdout = out


async def _run(
    pipeline: Pipeline,
    params: dict[str, Any],
    tags: dict[str, str],
    settings: Settings,
    args: argparse.Namespace,
    out: TextIO,
    cancelled: list[str],
) -> int:
    """Submit and follow the run; on cancellation (Ctrl-C) cancel it, note its id, re-raise."""
    from aexec.errors import AexecError, DefinitionError, TransportError

    async def start(ex: Executor) -> Run:
        try:
            return await ex.submit(pipeline, priority=args.priority, tags=tags, params=params)
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

    return await follow(settings, start, args, out, cancelled)


async def follow(
    settings: Settings,
    start: Callable[[Executor], Awaitable[Run]],
    args: argparse.Namespace,
    out: TextIO,
    cancelled: list[str],
) -> int:
    """Start a run (``start``) and follow it to its end, showing its progress; print its
    result or report (``args.json``); on cancellation (Ctrl-C) cancel it, note its id in
    ``cancelled``, re-raise.  Exit 0 if it succeeded, else 1."""
    import asyncio

    from aexec.cli.display import (
        dump_json,
        open_display,
        run_summary_line,
        step_failure_lines,
    )
    from aexec.cli.report import jsonable, run_report, step_notes
    from aexec.executor import Executor
    from aexec.types import RunStatus

    async with Executor(settings) as ex:
        run = await start(ex)
        try:
            display = open_display(sys.stderr, title=run.plan.pipeline, total=len(run.plan))
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
        # The notes of dynamic steps (map, cached, skipped), as `runs show --json` has them.
        # From the run, not the store: a remote executor has none.
        notes = step_notes([e async for e in run.events()]) if args.json else {}

    if args.json:
        write_line(out, dump_json(run_report(record, steps, result, notes)))
    else:
        if result is not None:
            write_line(out, dump_json(jsonable(result)))
        failures = step_failure_lines(steps)
        if not failures and not succeeded and record.error:
            failures = [one_line(record.error)]
        for line in [*failures, run_summary_line(record, steps)]:
            sys.stderr.write(line + "\n")
    return EXIT_OK if succeeded else EXIT_FAILED


def cmd_runs_rerun(args: argparse.Namespace) -> int:
    """``aexec runs rerun RUN_ID [--from-failure] [-p KEY=VALUE ...] [--file FILE]``."""
    from aexec.loader import load_file
    from aexec.service import with_connect_timeout
    from aexec.wire import MAX_PRIORITY

    params = parse_params(args.param)
    tags = dict(parse_tag(text) for text in args.tag)
    if args.priority is not None and not 0 <= args.priority <= MAX_PRIORITY:
        raise UsageError(f"--priority must be an integer 0..{MAX_PRIORITY}")
    settings = with_connect_timeout(resolve_settings(args))
    out = sys.stdout
    sys.stdout = sys.stderr  # as for `run`: only the result or report goes to stdout
    cancelled: list[str] = []
    try:
        pipeline = None
        if args.file is not None:
            module = load_file(args.file)
            pipeline = choose_pipeline(module, args.file, args.pipeline)

        async def start(ex: Executor) -> Run:
            return await ex.rerun(
                args.run_id,
                from_failure=args.from_failure,
                pipeline=pipeline,
                priority=args.priority,
                tags=tags or None,
                params=params,
            )

        return run_async(follow(settings, start, args, out, cancelled))
    except KeyboardInterrupt:
        what = f"run {cancelled[0][:8]} cancelled" if cancelled else "no run started"
        sys.stderr.write(f"{PROG}: interrupted: {what}\n")
        return EXIT_INTERRUPTED
    finally:
        sys.stdout = out


def _raised_where(exc: BaseException, pipeline: Pipeline) -> str:
    """``file:line`` of the innermost frame of ``exc`` in the pipeline's file."""
    file = pipeline.where.rpartition(":")[0]
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == file]
    return f"{file}:{frames[-1].lineno}" if frames else pipeline.where
