"""The UI in a real headless Chromium: what a user sees, live, and what they can do."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from playwright.async_api import Page, expect

import aexec
from aexec import pipeline, step
from aexec.executor import Executor
from aexec.types import RunStatus
from tests.web.conftest import TOKEN, Ui, ui_config

pytestmark = pytest.mark.browser

HOSTILE = '<img src=x onerror="window.pwned=1"><b id="injected">bold</b>'


@step
async def add(a: int, b: int) -> int:
    return a + b


@step
async def total(values: list[int]) -> int:
    return sum(values)


@pipeline
def small(x: int = 1) -> object:
    return add(add.alias("first")(x, 2), 3)


async def test_the_runs_list_shows_a_fresh_run_and_then_one_started_while_it_is_open(
    ui: Ui, page: Page
) -> None:
    first = await ui.executor.submit(small)
    await first.wait()
    await page.goto(ui.page_url())
    row = page.locator(f'tr[data-run="{first.run_id}"]')
    await expect(row).to_contain_text("small")
    await expect(row.locator(".badge")).to_have_text("succeeded")
    await expect(row).to_contain_text("2/2")

    second = await ui.executor.submit(small, tags={"team": "data"})  # appears, no reload
    await expect(page.locator(f'tr[data-run="{second.run_id}"]')).to_be_visible()

    await page.click(f'tr[data-run="{second.run_id}"] a.tag')  # the runs with that tag
    await expect(page.locator("#runs-body tr")).to_have_count(1)
    await expect(page.locator(f'tr[data-run="{second.run_id}"]')).to_contain_text("team=data")


async def test_the_run_page_follows_steps_live_as_they_finish(ui: Ui, page: Page) -> None:
    gates = {name: asyncio.Event() for name in ("a", "b")}

    @step
    async def wait_for(name: str) -> str:
        await gates[name].wait()
        return name

    @pipeline
    def gated() -> object:
        return [wait_for.alias("a")("a"), wait_for.alias("b")("b")]

    run = await ui.executor.submit(gated)
    await page.goto(ui.page_url(f"runs/{run.run_id}"))
    await expect(page.locator("#run-status .badge")).to_have_text("running")
    row_a = page.locator('#steps-body tr[data-step="a"]')
    await expect(row_a).to_have_attribute("data-status", "running")

    graph = page.locator("#dag canvas")
    await expect(graph).to_have_attribute("data-drawn", "running:2")
    gates["a"].set()
    await expect(graph).to_have_attribute("data-drawn", "running:1,succeeded:1")
    await expect(row_a).to_have_attribute("data-status", "succeeded")
    await expect(page.locator('#steps-body tr[data-step="b"]')).to_have_attribute(
        "data-status", "running"
    )
    gates["b"].set()
    await expect(page.locator("#run-status .badge")).to_have_text("succeeded")
    await expect(page.locator("#result")).to_contain_text('"a"')
    await expect(page.locator('#log-body tr[data-kind="run_succeeded"]')).to_have_count(1)
    assert await run.result() == ["a", "b"]
    # both attempts ran at once on the embedded worker: two lanes of its timeline
    timeline = page.locator("#timeline canvas")
    await expect(timeline).to_have_attribute("data-bars", "2")
    await expect(timeline).to_have_attribute("data-lanes", "2")


async def test_cancel_from_the_run_page_cancels_a_running_run(ui: Ui, page: Page) -> None:
    @step
    async def forever() -> None:
        await asyncio.Event().wait()

    @pipeline
    def stuck() -> object:
        return forever()

    run = await ui.executor.submit(stuck)
    await page.goto(ui.page_url(f"runs/{run.run_id}"))
    await expect(page.locator("#run-status .badge")).to_have_text("running")
    await page.click("#cancel")
    await page.click("#cancel-no")  # the confirmation can be declined
    assert run.status is RunStatus.RUNNING
    await page.click("#cancel")
    await page.click("#cancel-yes")
    record = await asyncio.wait_for(run.wait(), 10)
    assert record.status is RunStatus.CANCELLED
    await expect(page.locator("#run-status .badge")).to_have_text("cancelled")
    await expect(page.locator("#cancel")).to_be_disabled()


async def test_rerun_from_the_run_page_runs_only_what_failed_and_links_its_parent(
    ex: Executor, serve_ui: Any, page: Page
) -> None:
    calls: list[str] = []

    @step
    async def fetch() -> int:
        calls.append("fetch")
        return 2

    @step(retries=0)
    async def check(x: int) -> int:
        calls.append("check")
        if calls.count("check") == 1:
            raise ValueError("not yet")
        return x * 10

    @pipeline
    def flaky() -> object:
        return check(fetch())

    url = await serve_ui(ex, ui_config({"flaky": flaky}))
    first = await ex.submit(flaky)
    assert (await first.wait()).status is RunStatus.FAILED
    await page.goto(f"{url}runs/{first.run_id}#token={TOKEN}")
    await expect(page.locator("#run-status .badge")).to_have_text("failed")
    await expect(page.locator("#cancel")).to_be_disabled()
    await page.click("#rerun")
    await page.click("#rerun-no")  # the confirmation can be declined
    assert len(await ex.list_runs()) == 1
    await page.click("#rerun")
    await page.click("#rerun-yes")
    await expect(page.locator("#parent-run")).to_have_text(first.run_id)  # on the new run
    await expect(page.locator("#run-status .badge")).to_have_text("succeeded")
    await expect(page.locator("#result")).to_have_text("20")
    await expect(page.locator("#rerun")).to_be_disabled()  # nothing failed to run again
    second, _ = await ex.list_runs()
    assert second.parent == first.run_id and page.url.endswith(f"/runs/{second.run_id}")
    assert calls == ["fetch", "check", "check"]  # fetch's output was reused, not run again


async def test_a_steps_progress_and_log_lines_appear_on_its_page(ui: Ui, page: Page) -> None:
    go_on, finish = asyncio.Event(), asyncio.Event()

    @step
    async def chatty() -> int:
        aexec.current().progress(0.25, "a quarter <i>done</i>")
        await go_on.wait()
        aexec.current().progress(0.5, "half way")
        await finish.wait()
        return 1

    @pipeline
    def talk() -> object:
        return chatty()

    run = await ui.executor.submit(talk)
    await page.goto(ui.page_url(f"runs/{run.run_id}/steps/chatty"))
    log = page.locator("#step-log")
    await expect(log).to_contain_text("25% a quarter <i>done</i>")
    go_on.set()
    await expect(log).to_contain_text("50% half way")  # live
    await expect(log.locator("tr")).to_have_count(2)
    finish.set()
    assert await run.result() == 1
    await expect(page.locator("h1 .badge")).to_have_text("succeeded")
    await page.goto(ui.page_url(f"runs/{run.run_id}"))
    await expect(page.locator("#log-body")).to_contain_text("a quarter <i>done</i>")


async def test_an_error_message_containing_html_is_shown_as_text(ui: Ui, page: Page) -> None:
    @step
    async def hostile() -> None:
        raise ValueError(HOSTILE)

    @step(name=HOSTILE[:30])
    async def oddly_named() -> int:
        return 1

    @pipeline
    def attack() -> object:
        return [hostile(), oddly_named()]

    run = await ui.executor.submit(attack)
    await run.wait()
    await page.goto(ui.page_url(f"runs/{run.run_id}"))
    outcome = page.locator("#outcome")
    await expect(outcome.locator(".error-message")).to_have_text(f"ValueError: {HOSTILE}")
    await expect(page.locator("#injected")).to_have_count(0)
    await expect(page.locator("#steps-body")).to_contain_text(HOSTILE[:30])
    await page.goto(ui.page_url(f"runs/{run.run_id}/steps/hostile"))
    await expect(page.locator(".error-message").first).to_have_text(f"ValueError: {HOSTILE}")
    await expect(page.locator("#injected")).to_have_count(0)
    assert await page.evaluate("window.pwned") is None


async def test_a_wide_layer_of_one_step_is_drawn_as_one_node_with_zoom_and_pan(
    ui: Ui, page: Page
) -> None:
    @pipeline
    def wide() -> object:
        return total([add.alias(f"w{i}")(i, i) for i in range(40)])

    run = await ui.executor.submit(wide)
    await run.wait()
    await page.goto(ui.page_url(f"runs/{run.run_id}"))
    graph = page.locator("#dag canvas")
    await expect(graph).to_have_attribute("data-nodes", "2")  # 40 "add" steps, then 1
    await expect(graph).to_have_attribute("data-drawn", "succeeded:41")
    assert await run.result() == sum(2 * i for i in range(40))
    fitted = await graph.get_attribute("data-view")
    box = await graph.bounding_box()
    assert box is not None and fitted is not None
    await page.mouse.move(box["x"] + 40, box["y"] + 40)
    await page.mouse.wheel(0, -300)  # zoom in at the cursor
    await expect(graph).not_to_have_attribute("data-view", fitted)
    zoomed = await graph.get_attribute("data-view")
    assert zoomed is not None and float(zoomed.split()[0]) > float(fitted.split()[0])
    await page.mouse.down()
    await page.mouse.move(box["x"] + 140, box["y"] + 90, steps=5)  # pan
    await page.mouse.up()
    panned = await graph.get_attribute("data-view")
    assert panned is not None and panned.split()[0] == zoomed.split()[0] and panned != zoomed
    await page.click("#fit")
    await expect(graph).to_have_attribute("data-view", fitted)
    await expect(page.locator("#steps-body tr")).to_have_count(41)


async def test_a_pipeline_launched_from_the_page_runs_with_its_parameters_and_tags(
    ex: Executor, serve_ui: Any, page: Page
) -> None:
    url = await serve_ui(ex, ui_config({"small": small}))
    await page.goto(f"{url}launch#token={TOKEN}")
    await page.select_option("#launch-pipeline", "small")
    await expect(page.locator("#launch")).to_contain_text("x=1")  # its parameters
    await page.fill("#launch-params", '{"x": 10}')
    await page.fill("#launch-tags", "team=data")
    await page.click("#launch-submit")
    await expect(page.locator("#run-status .badge")).to_have_text("succeeded")
    await expect(page.locator("#result")).to_have_text("15")
    [record] = await ex.list_runs()
    assert (record.params, record.tags) == ({"x": 10}, {"team": "data"})
    assert page.url.endswith(f"/runs/{record.run_id}")


async def test_the_workers_and_queues_pages_show_the_embedded_worker(ui: Ui, page: Page) -> None:
    run = await ui.executor.submit(small)
    await run.wait()
    await page.goto(ui.page_url("workers"))
    row = page.locator('tr[data-worker="embedded"]')
    await expect(row).to_contain_text("default")
    await page.goto(ui.page_url("queues"))
    await expect(page.locator('tr[data-queue="default"]')).to_contain_text("default")
