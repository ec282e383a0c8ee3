"""The JSON API's actions: launch a run (and await it), cancel a run, rerun a run.

An action always needs the bearer token (:mod:`aexec.web.app` checks it before these
handlers run) and a JSON body, so a page of another site cannot make a browser act: it can
send neither the header nor, without a CORS preflight this server never grants, JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from aexec.dsl import Pipeline
from aexec.errors import AexecError, TransportError
from aexec.executor import Executor
from aexec.loader import find_pipelines, load_file
from aexec.types import RunStatus
from aexec.web.api import HttpError, Reads

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # bytes of an action's JSON body


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; a 415 unless it says it is JSON, a 400 if it is not."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise HttpError(415, "send the action as JSON (Content-Type: application/json)")
    body = await request.body()
    if len(body) > MAX_BODY:
        raise HttpError(413, f"the body is larger than {MAX_BODY} bytes")
    if not body:
        return {}
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise HttpError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise HttpError(400, "the body must be a JSON object")
    return value


class Actions:
    """Launch, cancel and rerun runs through ``executor``.  ``pipelines`` are the pipelines a
    launch may name; with ``allow_files``, a launch may also name a Python file on the
    server (``file``) and a pipeline in it."""

    def __init__(
        self,
        executor: Executor,
        reads: Reads,
        pipelines: Mapping[str, Pipeline],
        *,
        allow_files: bool,
    ) -> None:
        self.executor = executor
        self.reads = reads
        self.pipelines = dict(pipelines)
        self.allow_files = allow_files

    async def list_pipelines(self, request: Request) -> Response:
        """``GET /api/pipelines``: what a launch may name, with each pipeline's parameters."""
        return JSONResponse(
            {
                "pipelines": [
                    {"name": name, "parameters": _parameters(p)}
                    for name, p in sorted(self.pipelines.items())
                ],
                "files": self.allow_files,
            }
        )

    async def launch(self, request: Request) -> Response:
        """``POST /api/runs`` ``{"pipeline": NAME, "file": PATH?, "params": {...},
        "priority": N, "tags": {...}, "wait": false, "timeout": SECONDS}``: start a run;
        201 with its ``run_id``.  With ``"wait": true``, answer when it ends (or after ``timeout``
        seconds, 202) with the ``runs show --json`` report."""
        body = await json_body(request)
        pipeline = self._pipeline(body)
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise HttpError(400, "params must be a JSON object")
        priority = body.get("priority", 0)
        tags = body.get("tags") or {}
        timeout = body.get("timeout")
        if timeout is not None and not (
            isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0
        ):
            raise HttpError(400, "timeout must be a positive number of seconds")
        try:
            run = await self.executor.submit(pipeline, priority=priority, params=params, tags=tags)
        except TransportError as exc:
            raise HttpError(503, str(exc)) from exc
        except AexecError as exc:
            raise HttpError(400, str(exc)) from exc
        except Exception as exc:  # the pipeline body raised while compiling: bad input
            raise HttpError(
                400,
                f"pipeline {pipeline.name!r} raised {type(exc).__name__} while compiling: {exc}",
            ) from exc
        log.info("launched run %s of %s from the UI", run.run_id, pipeline.name)
        if not body.get("wait"):
            return JSONResponse({"run_id": run.run_id, "pipeline": pipeline.name}, status_code=201)
        try:
            async with asyncio.timeout(timeout):
                await run.wait()
        except TimeoutError:
            return JSONResponse(
                {"run_id": run.run_id, "status": str(run.status), "timed_out": True},
                status_code=202,
            )
        record = await self.reads.find_run(run.run_id)
        return JSONResponse(await self.reads.report(record))

    def _pipeline(self, body: dict[str, Any]) -> Pipeline:
        name = body.get("pipeline")
        file = body.get("file")
        if name is not None and not isinstance(name, str):
            raise HttpError(400, "pipeline must be a name")
        if file:
            if not self.allow_files:
                raise HttpError(403, "this server launches only the pipelines it lists")
            if not isinstance(file, str):
                raise HttpError(400, "file must be a path")
            try:
                found = find_pipelines(load_file(file))
            except AexecError as exc:
                raise HttpError(400, str(exc)) from exc
            if name is None and len(found) == 1:
                return next(iter(found.values()))
            if name is None or name not in found:
                names = ", ".join(sorted(found)) or "none"
                raise HttpError(400, f"name a pipeline of {file} (pipelines: {names})")
            return found[name]
        if name is None:
            raise HttpError(400, "name the pipeline to launch")
        if name not in self.pipelines:
            names = ", ".join(sorted(self.pipelines)) or "none"
            raise HttpError(404, f"no pipeline named {name!r} (pipelines: {names})")
        return self.pipelines[name]

    async def cancel(self, request: Request) -> Response:
        """``POST /api/runs/{id}/cancel``: ask for the run to be cancelled; 202, or 409 if
        it has already ended."""
        await json_body(request)
        record = await self.reads.find_run(request.path_params["run_id"])
        if record.status.finished:
            raise HttpError(409, f"run {record.run_id} has already ended ({record.status})")
        try:
            await self.executor.cancel(record.run_id)
        except TransportError as exc:
            raise HttpError(503, str(exc)) from exc
        except AexecError as exc:
            raise HttpError(409, str(exc)) from exc
        log.info("run %s cancelled from the UI", record.run_id)
        return JSONResponse(
            {"run_id": record.run_id, "status": str(RunStatus.CANCELLED), "requested": True},
            status_code=202,
        )

    async def rerun(self, request: Request) -> Response:
        """``POST /api/runs/{id}/rerun`` ``{"from_failure": true}``: start a new run of the
        run's pipeline, recording the run as its parent (:meth:`Executor.rerun
        <aexec.executor.Executor.rerun>`); 201 with the new ``run_id``.  With
        ``from_failure`` (the run must have ended), the steps that succeeded keep their
        outputs and only the others run.  The pipeline's code comes from the pipelines this
        server lists, when it lists the run's; without it, the run's plan in the store
        serves (not in embedded mode, whose worker needs the code: a 400 says so)."""
        body = await json_body(request)
        from_failure = body.get("from_failure", False)
        if not isinstance(from_failure, bool):
            raise HttpError(400, "from_failure must be true or false")
        record = await self.reads.find_run(request.path_params["run_id"])
        try:
            run = await self.executor.rerun(
                record.run_id,
                from_failure=from_failure,
                pipeline=self.pipelines.get(record.pipeline),
            )
        except TransportError as exc:
            raise HttpError(503, str(exc)) from exc
        except AexecError as exc:
            raise HttpError(400, str(exc)) from exc
        log.info("run %s reruns run %s, from the UI", run.run_id, record.run_id)
        return JSONResponse(
            {"run_id": run.run_id, "parent": record.run_id, "from_failure": from_failure},
            status_code=201,
        )


def _parameters(pipeline: Pipeline) -> list[dict[str, Any]]:
    import inspect

    try:
        signature = inspect.signature(pipeline.fn)
    except (TypeError, ValueError, AttributeError):
        return []
    found = []
    for p in signature.parameters.values():
        default = None if p.default is inspect.Parameter.empty else repr(p.default)
        found.append({"name": p.name, "default": default})
    return found
