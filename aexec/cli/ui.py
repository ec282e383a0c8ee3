"""``aexec ui``: serve the web UI and its JSON API (:mod:`aexec.web`, the ``ui`` extra)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from aexec.cli.common import UsageError, resolve_settings, run_async

if TYPE_CHECKING:
    import asyncio

    from aexec.config import Settings
    from aexec.web import UiConfig

log = logging.getLogger(__name__)

TOKEN_ENV = "AEXEC_UI_TOKEN"


def add_ui_options(parser: argparse.ArgumentParser, *, flag: bool) -> None:
    """``--host`` and ``--port`` (and ``--ui`` itself when ``flag``: ``aexec coordinator``)."""
    group = parser.add_argument_group("web UI (the ui extra: pip install 'aexec[ui]')")
    if flag:
        group.add_argument("--ui", action="store_true", help="serve the web UI as well")
    group.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to serve on (default 127.0.0.1; beyond localhost, every request "
        f"needs the token {TOKEN_ENV})",
    )
    group.add_argument("--port", type=int, default=8080, help="the port (default 8080)")
    group.add_argument(
        "-A",
        "--app",
        dest="ui_files",
        metavar="FILE",
        action="append",
        default=[],
        help="a pipeline file whose pipelines the UI may launch; repeat for several",
    )


def check_ui_options(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be 0..65535")
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError(
            "the web UI needs the ui extra: pip install 'aexec[ui]' (Starlette and uvicorn)"
        ) from None


def ui_config(args: argparse.Namespace) -> tuple[UiConfig, str | None]:
    """The UI's settings from ``args`` and ``AEXEC_UI_TOKEN``; the token is generated when
    not set, and returned to be shown (in the URL's fragment, never sent to a server log)."""
    import secrets

    from aexec.cli.run import choose_pipeline
    from aexec.loader import find_pipelines, load_file
    from aexec.web import UiConfig
    from aexec.web.server import is_loopback

    token = os.environ.get(TOKEN_ENV) or None
    shown = None
    if token is None:
        token = shown = secrets.token_urlsafe(24)
    pipelines: dict[str, Any] = {}
    for file in args.ui_files:
        module = load_file(file)
        found = find_pipelines(module)
        if not found:
            choose_pipeline(module, file, None)  # the one-line error of `aexec run`
        pipelines.update(found)
    config = UiConfig(
        token=token,
        public_reads=is_loopback(args.host),
        pipelines=pipelines,
        allow_files=True,
    )
    return config, shown


def cmd_ui(args: argparse.Namespace) -> int:
    check_ui_options(args)
    settings = resolve_settings(args)
    config, shown = ui_config(args)
    from aexec.cli.serve import serve_until_signalled

    async def serve(stop: asyncio.Event, ready: asyncio.Event) -> int:
        await serve_ui(settings, config, args, stop=stop, ready=ready, shown=shown)
        return 0

    return run_async(serve_until_signalled(serve))


async def serve_ui(
    settings: Settings,
    config: UiConfig,
    args: argparse.Namespace,
    *,
    stop: asyncio.Event,
    ready: asyncio.Event,
    shown: str | None,
) -> None:
    from aexec.executor import Executor
    from aexec.web.server import bind, serve

    sock = bind(args.host, args.port)

    def announce(url: str) -> None:
        ready.set()
        _announce(url, shown)

    async with Executor(settings) as ex:
        await serve(ex, config, sock, stop=stop, on_ready=announce)


async def coordinator_with_ui(
    settings: Settings,
    config: UiConfig,
    args: argparse.Namespace,
    *,
    stop: asyncio.Event,
    ready: asyncio.Event,
    shown: str | None,
) -> int:
    """``aexec coordinator --ui``: the coordinator service and the UI over one executor, so
    that runs launched from the UI are driven here and cancelled here."""
    import asyncio

    from aexec.executor import Executor
    from aexec.metrics import CoordinatorMetrics
    from aexec.ops import coordinator_endpoint
    from aexec.service import require_broker
    from aexec.web.server import bind, serve

    require_broker(settings, "coordinator")
    sock = bind(args.host, args.port)
    metrics = CoordinatorMetrics()  # /metrics, /healthz and /readyz, as without --ui
    async with (
        Executor(settings, metrics=metrics) as ex,
        coordinator_endpoint(settings, ex, metrics, ready=ready, stop=stop),
        asyncio.TaskGroup() as group,
    ):
        ui = group.create_task(
            serve(ex, config, sock, stop=stop, on_ready=lambda url: _announce(url, shown))
        )
        try:
            await ex.serve(stop, ready=ready)
        finally:
            stop.set()  # the coordinator stopped: so does the UI
        await ui
    return 0


def _announce(url: str, token: str | None) -> None:
    link = f"{url}#token={token}" if token else url
    sys.stderr.write(f"aexec UI on {link}\n")
    sys.stderr.flush()
