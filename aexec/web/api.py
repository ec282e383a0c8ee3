"""The JSON API's read endpoints: runs, a run with its plan, events, timeline and steps,
workers and queues.  Every handler reads through the executor's store (or its broker);
the shapes come from :mod:`aexec.web.views`."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from aexec.errors import AexecError, StoreError
from aexec.events import Event
from aexec.executor import Executor
from aexec.store import RunRecord
from aexec.types import RunStatus
from aexec.web import views

log = logging.getLogger(__name__)

PAGE = 50  # runs per page of the runs list
MAX_PAGE = 500
EVENTS_PAGE = 1000  # events per read of the event log
GRAPH_CACHE = 16  # plans whose graphs are kept, the most recently shown
STEP_EVENTS_LIMIT = 5000  # events read for one step's page or a run's timeline, at most


class HttpError(Exception):
    """A request the API refuses: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def query_int(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise HttpError(400, f"{name} must be an integer, not {text!r}") from None
    if not low <= value <= high:
        raise HttpError(400, f"{name} must be between {low} and {high}, not {value}")
    return value


class Reads:
    """The read endpoints over ``executor``."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        # Plans never change (a digest names one): their graphs, as sent, by digest.
        self._graphs: OrderedDict[str, bytes] = OrderedDict()

    async def find_run(self, run_id: str) -> RunRecord:
        try:
            record = await self.executor.get_run(run_id)
        except StoreError as exc:  # an ambiguous prefix
            raise HttpError(400, str(exc)) from exc
        if record is None:
            raise HttpError(404, f"no run matches {run_id!r}")
        return record

    async def runs(self, request: Request) -> Response:
        """``GET /api/runs?status=&pipeline=&tag=KEY=VALUE&offset=&limit=``: a page of runs,
        newest first, each a ``runs list --json`` line with ``steps``, its step counts by
        status."""
        params = request.query_params
        status_text = params.get("status") or None
        try:
            status = None if status_text is None else RunStatus(status_text)
        except ValueError:
            choices = ", ".join(s.value for s in RunStatus)
            raise HttpError(400, f"status must be one of {choices}") from None
        pipeline = params.get("pipeline") or None
        tag_text = params.get("tag") or None
        tag = None
        if tag_text is not None:
            key, sep, value = tag_text.partition("=")
            if not sep or not key:
                raise HttpError(400, f"tag must be KEY=VALUE, not {tag_text!r}")
            tag = (key, value)
        limit = query_int(request, "limit", PAGE, low=1, high=MAX_PAGE)
        offset = query_int(request, "offset", 0, low=0, high=10**9)
        store = self.executor.store
        # One more than the page tells whether there is a next page.
        runs = await store.list_runs(
            limit=limit + 1, status=status, pipeline=pipeline, tag=tag, offset=offset
        )
        more = len(runs) > limit
        runs = runs[:limit]
        counts = await store.step_counts(r.run_id for r in runs)
        return JSONResponse(
            {
                "runs": [views.run_row(r, counts.get(r.run_id)) for r in runs],
                "offset": offset,
                "limit": limit,
                "next": offset + limit if more else None,
            }
        )

    async def run(self, request: Request) -> Response:
        """``GET /api/runs/{id}``: the ``runs show --json`` report, steps detailed."""
        record = await self.find_run(request.path_params["run_id"])
        return JSONResponse(await self.report(record))

    async def report(self, record: RunRecord) -> dict[str, Any]:
        store = self.executor.store
        last_seq = await store.last_seq(record.run_id)  # before the steps: never too late
        steps = await store.get_steps(record.run_id)
        result = None
        if record.status is RunStatus.SUCCEEDED:
            try:
                result = await self.executor.load_result(record)
            except AexecError as exc:
                result = f"<the result cannot be read: {exc}>"
        return views.run_detail(record, steps, result, last_seq=last_seq)

    async def plan(self, request: Request) -> Response:
        """``GET /api/runs/{id}/plan``: the run's DAG."""
        record = await self.find_run(request.path_params["run_id"])
        body = self._graphs.get(record.plan_digest)
        if body is None:
            plan = await self.executor.store.get_plan(record.plan_digest)
            if plan is None:
                raise HttpError(404, f"the plan of run {record.run_id} is not in the store")
            body = bytes(JSONResponse(views.plan_graph(plan)).body)
            self._graphs[record.plan_digest] = body
            while len(self._graphs) > GRAPH_CACHE:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(record.plan_digest)
        return Response(body, media_type="application/json")

    async def events(self, request: Request) -> Response:
        """``GET /api/runs/{id}/events?after=&limit=``: ``runs logs --json`` lines as a list."""
        record = await self.find_run(request.path_params["run_id"])
        after = query_int(request, "after", 0, low=0, high=2**62)
        limit = query_int(request, "limit", EVENTS_PAGE, low=1, high=EVENTS_PAGE * 10)
        events = await self.executor.get_events(record.run_id, after=after, limit=limit)
        return JSONResponse({"events": [e.to_dict() for e in events]})

    async def timeline(self, request: Request) -> Response:
        """``GET /api/runs/{id}/timeline``: every attempt that started, by worker."""
        record = await self.find_run(request.path_params["run_id"])
        events: list[Event] = []
        after = 0
        while True:
            page = await self.executor.get_events(record.run_id, after=after, limit=EVENTS_PAGE)
            events += page
            if len(page) < EVENTS_PAGE:
                break
            after = page[-1].seq
        return JSONResponse({"attempts": views.timeline(events)})

    async def step(self, request: Request) -> Response:
        """``GET /api/runs/{id}/steps/{key}``: one step's inputs, output, attempts, events."""
        record = await self.find_run(request.path_params["run_id"])
        key = request.path_params["key"]
        store = self.executor.store
        steps = [s for s in await store.get_steps(record.run_id) if s.key == key]
        if not steps:
            raise HttpError(404, f"run {record.run_id} has no step {key!r}")
        plan = await store.get_plan(record.plan_digest)
        last_seq = await store.last_seq(record.run_id)
        events: list[Event] = []
        after = 0
        while len(events) < STEP_EVENTS_LIMIT:
            page = await store.get_events(record.run_id, after=after, limit=EVENTS_PAGE)
            events += [e for e in page if e.step == key and e.seq <= last_seq]
            if len(page) < EVENTS_PAGE or page[-1].seq >= last_seq:
                break
            after = page[-1].seq
        detail = views.step_detail(steps[0], plan, events)
        detail["run_id"] = record.run_id
        detail["last_seq"] = last_seq
        return JSONResponse(detail)

    async def workers(self, request: Request) -> Response:
        """``GET /api/workers``: ``worker list --json`` lines as a list."""
        workers = await self.executor.workers(wait=_wait(request))
        return JSONResponse({"workers": [w.to_dict() for w in workers]})

    async def queues(self, request: Request) -> Response:
        """``GET /api/queues``: each queue the workers serve, with its depth (messages
        waiting, when the broker tells), consumers and steps in flight."""
        workers = await self.executor.workers(wait=_wait(request))
        names = sorted({q for w in workers for q in w.queues})
        depths = await self.executor.queue_depths(names)
        rows = []
        for name in names:
            serving = [w for w in workers if name in w.queues]
            rows.append(
                {
                    "name": name,
                    "depth": depths.get(name),
                    "consumers": len(serving),
                    # A worker reports its in-flight steps over every queue it serves.
                    "in_flight": sum(w.in_flight for w in serving),
                }
            )
        return JSONResponse({"queues": rows})


def _wait(request: Request) -> float:
    return query_int(request, "wait_ms", 500, low=50, high=5000) / 1000
