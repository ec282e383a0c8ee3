"""The ASGI application: the pages, the JSON API under ``/api/``, and who may use them.

Access (:class:`UiConfig`):

* reading (pages' data, ``GET /api/...``) is open when ``public_reads`` (the server binds
  to localhost), and otherwise needs ``Authorization: Bearer <token>``;
* acting (``POST /api/...``: launch, cancel, rerun) always needs the bearer token, and is refused
  when no token is configured;
* the page shell and its script and style hold no data and are always served; the script
  reads a token given in the URL fragment (``/#token=...``), keeps it in the tab's
  ``sessionStorage`` and sends it as the bearer header.  No cookie is ever set, so another
  site cannot act with the user's credentials (no CSRF), and every response forbids
  framing and inline scripts (Content-Security-Policy);
* the credentials the executor's settings hold (broker and store passwords, the signing
  secret, ``AWS_SECRET_ACCESS_KEY``) are masked as ``***`` in every response, wherever a
  message or an error carries them.
"""

from __future__ import annotations

import hmac
import html
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from aexec.dsl import Pipeline
from aexec.errors import AexecError, StoreError
from aexec.executor import Executor
from aexec.web.actions import Actions
from aexec.web.api import HttpError, Reads, error_response
from aexec.web.sse import Streams

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        "form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class UiConfig:
    """Who may use the UI and what it may launch.

    ``token``: the bearer token actions need (and reads, unless ``public_reads``); None
    refuses every action.  ``pipelines``: the pipelines a launch may name, by name.
    ``allow_files``: a launch may name a Python file on the server instead.
    """

    token: str | None = field(default=None, repr=False)
    public_reads: bool = True
    pipelines: Mapping[str, Pipeline] = field(default_factory=dict)
    allow_files: bool = False


def app(executor: Executor, config: UiConfig | None = None) -> Starlette:
    """The UI and its JSON API over ``executor`` (open it first, and keep it open while the
    app serves).  Mount it in a Starlette or FastAPI service, or serve it with uvicorn."""
    config = config or UiConfig()
    reads = Reads(executor)
    actions = Actions(executor, reads, config.pipelines, allow_files=config.allow_files)
    streams = Streams(executor, reads)
    guard = _Guard(config)

    def read(handler: Handler) -> Handler:
        return guard.wrap(handler, action=False)

    def act(handler: Handler) -> Handler:
        return guard.wrap(handler, action=True)

    static = resources.files("aexec.web").joinpath("static")
    routes = [
        Route("/api/runs", read(reads.runs), methods=["GET"]),
        Route("/api/runs", act(actions.launch), methods=["POST"]),
        Route("/api/runs/stream", read(streams.runs), methods=["GET"]),
        Route("/api/runs/{run_id}", read(reads.run), methods=["GET"]),
        Route("/api/runs/{run_id}/plan", read(reads.plan), methods=["GET"]),
        Route("/api/runs/{run_id}/events", read(reads.events), methods=["GET"]),
        Route("/api/runs/{run_id}/stream", read(streams.run_events), methods=["GET"]),
        Route("/api/runs/{run_id}/timeline", read(reads.timeline), methods=["GET"]),
        Route("/api/runs/{run_id}/steps/{key:path}", read(reads.step), methods=["GET"]),
        Route("/api/runs/{run_id}/cancel", act(actions.cancel), methods=["POST"]),
        Route("/api/runs/{run_id}/rerun", act(actions.rerun), methods=["POST"]),
        Route("/api/pipelines", read(actions.list_pipelines), methods=["GET"]),
        Route("/api/workers", read(reads.workers), methods=["GET"]),
        Route("/api/queues", read(reads.queues), methods=["GET"]),
        Route("/api/{rest:path}", _not_found),
        Mount("/static", app=StaticFiles(directory=str(static)), name="static"),
        Route("/{page:path}", _shell(static.joinpath("index.html").read_text(encoding="utf-8"))),
    ]
    secrets = [*executor.settings.secret_values(), os.environ.get("AWS_SECRET_ACCESS_KEY", "")]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_SecurityHeaders), Middleware(_Masked, secrets=secrets)],
    )


class _Guard:
    def __init__(self, config: UiConfig) -> None:
        self._token = config.token
        self._public_reads = config.public_reads

    def wrap(self, handler: Handler, *, action: bool) -> Handler:
        async def guarded(request: Request) -> Response:
            refusal = self._refusal(request, action=action)
            if refusal is not None:
                return refusal
            try:
                return await handler(request)
            except HttpError as exc:
                return error_response(exc.status, exc.message)
            except StoreError as exc:
                log.warning("UI request %s failed: %s", request.url.path, exc)
                return error_response(503, str(exc))
            except AexecError as exc:
                return error_response(400, str(exc))

        return guarded

    def _refusal(self, request: Request, *, action: bool) -> Response | None:
        if not action and self._public_reads:
            return None
        if self._token is None:
            return error_response(
                403, "actions are disabled: start the UI with a token (AEXEC_UI_TOKEN)"
            )
        given = request.headers.get("authorization", "")
        scheme, _, credentials = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credentials.strip().encode(), self._token.encode()
        ):
            return JSONResponse(
                {"error": "a bearer token is required (Authorization: Bearer <AEXEC_UI_TOKEN>)"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="aexec"'},
            )
        return None


async def _not_found(request: Request) -> Response:
    return error_response(404, f"no API endpoint {request.url.path}")


def _shell(template: str) -> Handler:
    """The page shell, its links under the path the app is mounted at (``root_path``)."""

    async def page(request: Request) -> Response:
        root = html.escape(request.scope.get("root_path", "").rstrip("/"), quote=True)
        return Response(template.replace("{root}", root), media_type="text/html; charset=utf-8")

    return page


class _Masked:
    """Replaces each of ``secrets`` (as text, and as JSON escapes it) with ``***`` in the
    bodies of JSON and event-stream responses.  Every body chunk this app sends is a whole
    JSON document or SSE message, so a secret is never split across two."""

    def __init__(self, app: ASGIApp, secrets: list[str]) -> None:
        self.app = app
        found: set[bytes] = set()
        for secret in secrets:
            if len(secret) >= 4:  # shorter values would mask ordinary text
                found |= {secret.encode(), json.dumps(secret, ensure_ascii=False)[1:-1].encode()}
        self.secrets = sorted(found, key=len, reverse=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.secrets:
            await self.app(scope, receive, send)
            return
        masking = False

        async def send_masked(message: dict[str, Any]) -> None:
            nonlocal masking
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                kind = headers.get(b"content-type", b"")
                masking = kind.startswith((b"application/json", b"text/event-stream"))
                if masking:  # the length changes
                    message["headers"] = [
                        (k, v) for k, v in message.get("headers", []) if k != b"content-length"
                    ]
            elif message["type"] == "http.response.body" and masking:
                body = message.get("body", b"")
                for secret in self.secrets:
                    body = body.replace(secret, b"***")
                message["body"] = body
            await send(message)

        await self.app(scope, receive, send_masked)  # type: ignore[arg-type]


class _SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))  # type: ignore[call-overload]
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)  # type: ignore[arg-type]
