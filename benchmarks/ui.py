"""UI benchmarks: the runs page's server time over 10,000 stored runs, the 11,002-step
run page in headless Chromium, and many concurrent runs with the UI on and off.

    python -m benchmarks.ui [--runs 10000] [--chords 1000] [--repeat 5] [--json FILE]
    python -m benchmarks.ui --screenshot docs/ui-run.png     # the README's picture

* **runs page**: 10,000 runs in a SQLite store (and in PostgreSQL when it answers at
  ``AEXEC_TEST_POSTGRES_URL`` or 127.0.0.1:5432, in a database of its own, dropped after);
  server time of ``GET /api/runs`` (the first page, a status filter, a pipeline filter and
  the last page), called on the ASGI app in-process: median over ``--repeat`` x 20 calls.
* **run page**: a finished chain of ``--chords`` chords (1,000: 11,002 steps) in SQLite;
  headless Chromium loads ``/runs/<id>`` until the page is interactive (its script marks
  ``<body data-ready>`` once the graph, the steps and the log are drawn): median of
  ``--repeat`` loads.  Needs Chromium (``chromium-headless-shell``) and Playwright.
* **many runs**: 200 concurrent runs x 50 no-op steps on the embedded executor, with the
  UI served from the same executor and a client following the runs list and one run over
  SSE, and without: medians of ``--repeat`` alternating rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aexec import pipeline, step
from aexec.config import Settings
from aexec.executor import Executor
from aexec.plan import StepSpec, build
from aexec.store import RunRecord, Store
from aexec.types import RunStatus

ROOT = Path(__file__).resolve().parent.parent
POSTGRES = os.environ.get(
    "AEXEC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@step
async def nothing() -> None:
    return None


@pipeline
def fifty() -> None:
    for i in range(50):
        nothing.alias(f"n{i}")()


# -- runs page --------------------------------------------------------------------------------


async def fill(store: Store, n: int) -> None:
    """``n`` runs of three pipelines, a tenth of them failed, each with 3 steps."""
    plans = [
        build(
            f"pipeline_{k}",
            [StepSpec("a", "x"), StepSpec("b", "x", deps=("a",)), StepSpec("c", "x")],
        )
        for k in range(3)
    ]
    t0 = time.time() - n
    for i in range(n):
        plan = plans[i % 3]
        status = RunStatus.FAILED if i % 10 == 0 else RunStatus.SUCCEEDED
        record = RunRecord(uuid.uuid4().hex, plan.pipeline, plan.digest, created_at=t0 + i)
        await store.create_run(record, plan)
        if status is RunStatus.FAILED:
            await store.fail_run(record.run_id, "boom", ts=t0 + i + 0.5)


async def asgi_get(app: Any, path: str, query: str) -> tuple[int, float]:
    """Status and seconds of one GET on the ASGI app, in-process (server time only)."""
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [],
        "scheme": "http",
        "server": ("bench", 80),
        "client": ("127.0.0.1", 1),
        "http_version": "1.1",
    }
    t0 = time.perf_counter()
    await app(scope, receive, send)
    return status, time.perf_counter() - t0


async def runs_page(store_url: str, n: int, repeat: int) -> dict[str, float]:
    import aexec.web

    settings = Settings(store=store_url, home=tempfile.mkdtemp(prefix="aexec-bench-ui-"))
    async with Executor(settings) as ex:
        await fill(ex.store, n)
        app = aexec.web.app(ex)
        queries = {
            "first page": "",
            "status=failed": "status=failed",
            "pipeline=pipeline_1": "pipeline=pipeline_1",
            f"last page (offset {n - 50})": f"offset={n - 50}",
        }
        found = {}
        for name, query in queries.items():
            times = []
            for _ in range(repeat * 20):
                status, seconds = await asgi_get(app, "/api/runs", query)
                assert status == 200, status
                times.append(seconds)
            found[name] = statistics.median(times) * 1000
    return found


async def with_postgres(n: int, repeat: int) -> dict[str, float] | None:
    import asyncpg

    from benchmarks.faults.net import port_open

    if not port_open("127.0.0.1", 5432):
        return None
    name = f"aexec_bench_ui_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(POSTGRES)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = POSTGRES.rsplit("/", 1)[0] + f"/{name}"
        return await runs_page(url, n, repeat)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# -- run page in Chromium ------------------------------------------------------------------------


async def run_page(chords: int, repeat: int) -> dict[str, Any] | None:
    chromium = (
        os.environ.get("AEXEC_TEST_CHROMIUM")
        or shutil.which("chromium-headless-shell")
        or shutil.which("chromium")
    )
    if chromium is None:
        return None
    from playwright.async_api import async_playwright

    import aexec.web
    from aexec.web.server import address_url, bind, serve

    sys.path.insert(0, str(ROOT / "examples"))
    from chords import chain_of_chords  # type: ignore[import-not-found]

    settings = Settings(home=tempfile.mkdtemp(prefix="aexec-bench-ui-"))
    async with Executor(settings) as ex:
        run = await ex.submit(chain_of_chords, n=chords)
        await run.wait()
        sock = bind("127.0.0.1", 0)
        url = address_url(sock)
        stop = asyncio.Event()
        server = asyncio.create_task(serve(ex, aexec.web.UiConfig(), sock, stop=stop))
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=chromium)
                page = await browser.new_page(viewport={"width": 1400, "height": 900})
                times = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    await page.goto(f"{url}runs/{run.run_id}")
                    await page.wait_for_selector("body[data-ready]", timeout=60_000)
                    times.append(time.perf_counter() - t0)
                    # interactive: zooming redraws the graph
                    t1 = time.perf_counter()
                    await page.click("#fit")
                    zoom = time.perf_counter() - t1
                await browser.close()
        finally:
            stop.set()
            await server
    return {
        "steps": len(run.plan),
        "first_load_ms": times[0] * 1000,  # the server reads the plan's graph, then caches it
        "load_ms": statistics.median(times) * 1000,
        "fit_ms": zoom * 1000,
    }


# -- many runs with the UI on and off ------------------------------------------------------


async def many_runs(with_ui: bool, runs: int = 200) -> float:
    import aiohttp

    import aexec.web
    from aexec.web.server import address_url, bind, serve

    settings = Settings(store="memory://", objects="memory://", home=tempfile.mkdtemp())
    async with Executor(settings) as ex:
        warm = await ex.submit(fifty)
        await warm.wait()
        stop = asyncio.Event()
        tasks: list[asyncio.Task[Any]] = []
        if with_ui:
            sock = bind("127.0.0.1", 0)
            url = address_url(sock)
            tasks.append(asyncio.create_task(serve(ex, aexec.web.UiConfig(), sock, stop=stop)))
        t0 = time.perf_counter()
        started = [await ex.submit(fifty) for _ in range(runs)]
        if with_ui:
            session = aiohttp.ClientSession()

            async def follow(path: str) -> None:
                async with session.get(url + path) as response:
                    async for _ in response.content:
                        if stop.is_set():
                            return

            tasks.append(asyncio.create_task(follow("api/runs/stream")))
            tasks.append(asyncio.create_task(follow(f"api/runs/{started[-1].run_id}/stream")))
        for run in started:
            await run.wait()
        elapsed = time.perf_counter() - t0
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if with_ui:
            await session.close()
    return elapsed


async def compare(repeat: int) -> dict[str, float]:
    off, on = [], []
    for _ in range(repeat):
        off.append(await many_runs(False))
        on.append(await many_runs(True))
    return {
        "off_s": statistics.median(off),
        "on_s": statistics.median(on),
        "off_min": min(off),
        "off_max": max(off),
        "on_min": min(on),
        "on_max": max(on),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    home = tempfile.mkdtemp(prefix="aexec-bench-ui-")
    results["runs_page_sqlite_ms"] = await runs_page(
        f"sqlite:///{home}/runs.db", args.runs, args.repeat
    )
    print(f"runs page, {args.runs} runs in SQLite (median server ms):", flush=True)
    for name, ms in results["runs_page_sqlite_ms"].items():
        print(f"  {name:<28} {ms:7.2f} ms")
    pg = await with_postgres(args.runs, args.repeat)
    if pg is not None:
        results["runs_page_postgres_ms"] = pg
        print(f"runs page, {args.runs} runs in PostgreSQL (median server ms):")
        for name, ms in pg.items():
            print(f"  {name:<28} {ms:7.2f} ms")
    page = await run_page(args.chords, args.repeat)
    if page is None:
        print("run page: skipped (no Chromium)")
    else:
        results["run_page"] = page
        print(
            f"run page of {page['steps']} steps in headless Chromium: interactive in "
            f"{page['first_load_ms']:.0f} ms the first time, {page['load_ms']:.0f} ms (median), "
            f"fit redraw {page['fit_ms']:.0f} ms"
        )
    many = await compare(args.repeat)
    results["many_runs"] = many
    print(
        f"200 runs x 50 steps embedded: UI off {many['off_s']:.2f} s "
        f"({many['off_min']:.2f}-{many['off_max']:.2f}), UI on and followed "
        f"{many['on_s']:.2f} s ({many['on_min']:.2f}-{many['on_max']:.2f})"
    )
    return results


async def screenshot(path: str) -> None:
    """The run page of ``examples/word_count.py`` (6 shards) as the README shows it."""
    from playwright.async_api import async_playwright

    import aexec.web
    from aexec.loader import find_pipelines, load_file
    from aexec.web.server import address_url, bind, serve

    chromium = (
        os.environ.get("AEXEC_TEST_CHROMIUM")
        or shutil.which("chromium-headless-shell")
        or shutil.which("chromium")
    )
    if chromium is None:
        raise SystemExit("the screenshot needs Chromium (apt-get install chromium-headless-shell)")
    [word_count] = find_pipelines(load_file(ROOT / "examples" / "word_count.py")).values()
    settings = Settings(home=tempfile.mkdtemp(prefix="aexec-bench-ui-"))
    async with Executor(settings) as ex:
        run = await ex.submit(word_count, shards=6, top=5)
        await run.wait()
        sock = bind("127.0.0.1", 0)
        url = address_url(sock)
        stop = asyncio.Event()
        server = asyncio.create_task(serve(ex, aexec.web.UiConfig(), sock, stop=stop))
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=chromium)
                page = await browser.new_page(viewport={"width": 1280, "height": 1100})
                await page.goto(f"{url}runs/{run.run_id}")
                await page.wait_for_selector("body[data-ready]")
                await page.wait_for_timeout(300)  # the timeline loads after the page is ready
                await page.screenshot(path=path, full_page=False)
                await browser.close()
        finally:
            stop.set()
            await server
    print(f"wrote {path}")


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ui")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--chords", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--screenshot", metavar="PNG", help="only save the run page's picture")
    args = parser.parse_args()
    if args.screenshot:
        asyncio.run(screenshot(args.screenshot))
        return
    results = asyncio.run(main(args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    cli()
