"""The UI served for real on a free localhost port over an embedded executor, and a headless
Chromium to look at it (Debian's ``chromium-headless-shell`` or ``chromium``, driven by
Playwright through ``executable_path``: ``playwright install`` cannot download here).

Without Chromium or Playwright the browser tests skip locally and fail under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

import aexec.testing
from aexec.dsl import Pipeline
from aexec.executor import Executor
from aexec.web import UiConfig
from aexec.web.server import address_url, bind, serve

TOKEN = "test-token-0123456789"
CHROMIUM_NAMES = ("chromium-headless-shell", "chromium", "chromium-browser")


@dataclass
class Ui:
    url: str  # ends with "/"
    executor: Executor
    token: str | None

    def page_url(self, path: str = "", *, with_token: bool = True) -> str:
        fragment = f"#token={self.token}" if with_token and self.token else ""
        return self.url + path.lstrip("/") + fragment


@pytest.fixture
async def ex() -> AsyncIterator[Executor]:
    async with aexec.testing.executor(heartbeat_interval=0.05) as executor:
        yield executor


async def start_ui(
    executor: Executor,
    config: UiConfig,
    stack: list[tuple[asyncio.Event, asyncio.Task[None]]],
) -> str:
    sock = bind("127.0.0.1", 0)
    url = address_url(sock)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(executor, config, sock, stop=stop))
    stack.append((stop, task))
    return url


@pytest.fixture
async def serve_ui() -> AsyncIterator[Any]:
    """``await serve_ui(executor, config)`` → the URL of the UI it serves until the test ends."""
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(executor: Executor, config: UiConfig) -> str:
        return await start_ui(executor, config, running)

    yield start
    for stop, task in running:
        stop.set()
        await asyncio.wait_for(task, 10)


def ui_config(pipelines: Mapping[str, Pipeline] | None = None, **fields: Any) -> UiConfig:
    return UiConfig(token=TOKEN, pipelines=dict(pipelines or {}), **fields)


@pytest.fixture
async def ui(ex: Executor, serve_ui: Any) -> Ui:
    return Ui(await serve_ui(ex, ui_config()), ex, TOKEN)


@pytest.fixture(scope="session")
def chromium() -> str:
    from tests.plugins.services import service_unavailable

    explicit = os.environ.get("AEXEC_TEST_CHROMIUM")
    found = explicit or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if found is None:
        service_unavailable(
            "Chromium is not installed (apt-get install chromium-headless-shell; .ci/run does)"
        )
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        service_unavailable("Playwright is not installed (pip install -e '.[ui,test]')")
    assert found is not None
    return found


@pytest.fixture
async def page(chromium: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            page = await context.new_page()
            page.set_default_timeout(10_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
            assert errors == [], f"the page raised: {errors}"
        finally:
            await browser.close()
