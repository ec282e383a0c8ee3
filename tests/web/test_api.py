"""The JSON API over HTTP: the ``--json`` shapes, filters and pages, live streams that
resume, actions behind the bearer token, and what is never served."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from aexec import pipeline, step
from aexec.cli.report import run_report
from aexec.executor import Executor
from aexec.types import RunStatus
from aexec.web import UiConfig
from tests.web.conftest import TOKEN, Ui, ui_config

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@step
async def add(a: int, b: int) -> int:
    return a + b


@step
async def boom() -> None:
    raise ValueError("no luck")


@pipeline
def small(x: int = 1) -> object:
    return add(add.alias("first")(x, 2), 3)


@pipeline
def broken() -> object:
    return boom()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.get(url, **kwargs) as response:
        return response.status, await response.json()


async def post(
    http: aiohttp.ClientSession, url: str, body: Any = None, *, auth: bool = True, **kw: Any
) -> tuple[int, Any]:
    headers = {**(AUTH if auth else {}), **kw.pop("headers", {})}
    async with http.post(url, json=body if body is not None else {}, headers=headers) as r:
        return r.status, await r.json()


async def test_the_run_endpoint_answers_the_runs_show_json_report(
    ui: Ui, http: aiohttp.ClientSession
) -> None:
    run = await ui.executor.submit(small, x=4)
    record = await run.wait()
    status, body = await get(http, f"{ui.url}api/runs/{run.run_id[:8]}")
    assert status == 200
    expected = run_report(record, await run.steps(), 9)
    assert {k: body[k] for k in expected} | {"steps": None} == expected | {"steps": None}
    for key, row in expected["steps"].items():
        assert body["steps"][key]["status"] == row["status"]
        assert body["steps"][key]["attempts"] == row["attempts"]
    assert body["run"]["params"] == {"x": 4}
    assert body["last_seq"] > 0


async def test_runs_are_listed_newest_first_filtered_and_paged_with_step_counts(
    ui: Ui, http: aiohttp.ClientSession
) -> None:
    ids = []
    for _ in range(3):
        run = await ui.executor.submit(small)
        await run.wait()
        ids.append(run.run_id)
    failed = await ui.executor.submit(broken)
    await failed.wait()

    status, page = await get(http, f"{ui.url}api/runs?limit=2")
    assert status == 200
    assert [r["run_id"] for r in page["runs"]] == [failed.run_id, ids[2]]
    assert page["next"] == 2
    _, rest = await get(http, f"{ui.url}api/runs?limit=2&offset=2")
    assert [r["run_id"] for r in rest["runs"]] == [ids[1], ids[0]]
    assert rest["next"] is None
    _, only = await get(http, f"{ui.url}api/runs?pipeline=small&status=succeeded")
    assert [r["run_id"] for r in only["runs"]] == ids[::-1]
    assert only["runs"][0]["steps"] == {"succeeded": 2}
    _, failures = await get(http, f"{ui.url}api/runs?status=failed")
    assert [(r["run_id"], r["steps"]) for r in failures["runs"]] == [(failed.run_id, {"failed": 1})]
    status, error = await get(http, f"{ui.url}api/runs?status=bogus")
    assert status == 400 and "status must be one of" in error["error"]
    status, error = await get(http, f"{ui.url}api/runs?limit=x")
    assert status == 400


async def test_a_failed_steps_page_has_its_error_and_traceback(
    ui: Ui, http: aiohttp.ClientSession
) -> None:
    run = await ui.executor.submit(broken)
    await run.wait()
    status, body = await get(http, f"{ui.url}api/runs/{run.run_id}/steps/boom")
    assert status == 200
    assert body["status"] == "failed"
    assert body["error"]["message"] == "no luck"
    assert "raise ValueError" in body["error"]["traceback"]
    assert [a["status"] for a in body["attempt_list"]] == ["failed"]
    status, _ = await get(http, f"{ui.url}api/runs/{run.run_id}/steps/nope")
    assert status == 404
    status, _ = await get(http, f"{ui.url}api/runs/ffffffffffff")
    assert status == 404


async def test_a_steps_inputs_and_output_are_summarized(
    ui: Ui, http: aiohttp.ClientSession
) -> None:
    run = await ui.executor.submit(small, x=5)
    await run.wait()
    _, body = await get(http, f"{ui.url}api/runs/{run.run_id}/steps/add")
    assert body["deps"] == ["first"]
    assert body["inputs"] == '{"args": ["<output of first>", 3], "kwargs": {}}'
    assert body["output"] == "10"


async def read_stream(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> list[tuple[str | None, str, Any]]:
    """Every message of an SSE stream that ends: (id, event, data)."""
    found = []
    async with http.get(url, headers=headers or {}) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = await response.text()
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            found.append(
                (fields.get("id"), fields.get("event", "message"), json.loads(fields["data"]))
            )
    return found


async def test_the_event_stream_resumes_after_last_event_id_and_ends_with_the_run(
    ui: Ui, http: aiohttp.ClientSession
) -> None:
    run = await ui.executor.submit(small)
    await run.wait()
    everything = await read_stream(http, f"{ui.url}api/runs/{run.run_id}/stream")
    kinds = [event for _, event, _ in everything]
    assert kinds[0] == "run_submitted" and kinds[-2:] == ["run_succeeded", "end"]
    seqs = [int(i) for i, _, _ in everything if i is not None]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    middle = seqs[len(seqs) // 2]
    resumed = await read_stream(
        http, f"{ui.url}api/runs/{run.run_id}/stream", {"Last-Event-ID": str(middle)}
    )
    assert [int(i) for i, _, _ in resumed if i is not None] == [s for s in seqs if s > middle]


async def test_the_event_stream_of_a_running_run_delivers_events_as_they_happen(
    ui: Ui, http: aiohttp.ClientSession
) -> None:
    gate = asyncio.Event()

    @step
    async def held() -> int:
        await gate.wait()
        return 7

    @pipeline
    def waiting() -> object:
        return held()

    run = await ui.executor.submit(waiting)
    async with http.get(f"{ui.url}api/runs/{run.run_id}/stream") as response:
        lines = response.content
        seen: list[str] = []
        while "step_started" not in seen:
            line = (await asyncio.wait_for(lines.readline(), 10)).decode()
            if line.startswith("event: "):
                seen.append(line.removeprefix("event: ").strip())
        gate.set()
        while "end" not in seen:
            line = (await asyncio.wait_for(lines.readline(), 10)).decode()
            if line.startswith("event: "):
                seen.append(line.removeprefix("event: ").strip())
    assert seen[-2:] == ["run_succeeded", "end"]


async def test_actions_need_the_bearer_token_and_json(ui: Ui, http: aiohttp.ClientSession) -> None:
    url = f"{ui.url}api/runs"
    status, body = await post(http, url, {"pipeline": "small"}, auth=False)
    assert status == 401 and "bearer token" in body["error"]
    status, _ = await post(
        http, url, {"pipeline": "small"}, auth=False, headers={"Authorization": "Bearer wrong"}
    )
    assert status == 401
    async with http.post(url, data="pipeline=small", headers={**AUTH}) as response:
        assert response.status == 415  # a cross-site form cannot post JSON
    assert (await ui.executor.list_runs()) == []


async def test_a_launch_runs_a_listed_pipeline_and_can_await_its_report(
    ex: Executor, serve_ui: Any, http: aiohttp.ClientSession
) -> None:
    url = await serve_ui(ex, ui_config({"small": small, "broken": broken}))
    _, listed = await get(http, f"{url}api/pipelines")
    assert [p["name"] for p in listed["pipelines"]] == ["broken", "small"]
    assert listed["pipelines"][1]["parameters"] == [{"name": "x", "default": "1"}]

    status, body = await post(
        http, f"{url}api/runs", {"pipeline": "small", "params": {"x": 10}, "wait": True}
    )
    assert status == 200
    assert (body["status"], body["result"]) == ("succeeded", 15)
    status, started = await post(http, f"{url}api/runs", {"pipeline": "broken"})
    assert status == 201
    record = await ex.store.get_run(started["run_id"])
    assert record is not None and record.pipeline == "broken"
    status, error = await post(http, f"{url}api/runs", {"pipeline": "nope"})
    assert status == 404 and "small" in error["error"]
    status, error = await post(http, f"{url}api/runs", {"pipeline": "small", "params": {"y": 1}})
    assert status == 400 and "y" in error["error"]


async def test_a_launch_from_a_file_needs_the_server_to_allow_it(
    ex: Executor, serve_ui: Any, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    file = tmp_path / "pipe.py"
    file.write_text(
        "from aexec import pipeline, step\n\n@step\ndef one() -> int:\n    return 1\n\n"
        "@pipeline\ndef from_file():\n    return one()\n"
    )
    closed = await serve_ui(ex, ui_config())
    status, body = await post(http, f"{closed}api/runs", {"file": str(file)})
    assert status == 403
    opened = await serve_ui(ex, ui_config(allow_files=True))
    status, body = await post(http, f"{opened}api/runs", {"file": str(file), "wait": True})
    assert (status, body["result"]) == (200, 1)
    status, body = await post(http, f"{opened}api/runs", {"file": str(tmp_path / "no.py")})
    assert status == 400


async def test_cancel_cancels_a_running_run_and_refuses_an_ended_one(
    ui: Ui, http: aiohttp.ClientSession
) -> None:
    @step
    async def forever() -> None:
        await asyncio.Event().wait()

    @pipeline
    def stuck() -> object:
        return forever()

    run = await ui.executor.submit(stuck)
    status, body = await post(http, f"{ui.url}api/runs/{run.run_id}/cancel")
    assert status == 202
    assert (await asyncio.wait_for(run.wait(), 10)).status is RunStatus.CANCELLED
    status, body = await post(http, f"{ui.url}api/runs/{run.run_id}/cancel")
    assert status == 409 and "already ended" in body["error"]


async def test_rerun_needs_the_pipelines_code_in_embedded_mode_and_refuses_bad_input(
    ex: Executor, serve_ui: Any, http: aiohttp.ClientSession
) -> None:
    run = await ex.submit(small, x=4)
    await run.wait()
    unlisted = await serve_ui(ex, ui_config())
    status, body = await post(http, f"{unlisted}api/runs/{run.run_id}/rerun")
    assert status == 400 and "needs the pipeline's code" in body["error"]
    listed = await serve_ui(ex, ui_config({"small": small}))
    status, body = await post(http, f"{listed}api/runs/{run.run_id}/rerun", {"from_failure": 1})
    assert status == 400 and "from_failure" in body["error"]
    status, body = await post(http, f"{listed}api/runs/feedbeef/rerun")
    assert status == 404
    status, body = await post(http, f"{listed}api/runs/{run.run_id}/rerun", {"from_failure": True})
    assert status == 201 and body["parent"] == run.run_id
    rerun = await ex.get_run(body["run_id"])
    assert rerun is not None and rerun.parent == run.run_id
    assert len(await ex.list_runs()) == 2
    status, body = await post(http, f"{listed}api/runs/{run.run_id}/rerun", {}, auth=False)
    assert status in (401, 403)  # an action always needs the token


async def test_with_no_token_configured_every_action_is_refused(
    ex: Executor, serve_ui: Any, http: aiohttp.ClientSession
) -> None:
    url = await serve_ui(ex, UiConfig(token=None, pipelines={"small": small}))
    status, body = await post(http, f"{url}api/runs", {"pipeline": "small"})
    assert status == 403 and "AEXEC_UI_TOKEN" in body["error"]
    assert await ex.list_runs() == []


async def test_beyond_localhost_reads_need_the_token_too_but_the_page_shell_does_not(
    ex: Executor, serve_ui: Any, http: aiohttp.ClientSession
) -> None:
    url = await serve_ui(ex, ui_config(public_reads=False))
    status, _ = await get(http, f"{url}api/runs")
    assert status == 401
    async with http.get(f"{url}api/runs/x/stream") as response:
        assert response.status == 401
    status, _ = await get(http, f"{url}api/runs", headers=AUTH)
    assert status == 200
    async with http.get(url) as response:
        assert response.status == 200
        assert "<main" in await response.text()


async def test_every_response_forbids_framing_and_inline_scripts(
    ui: Ui, http: aiohttp.ClientSession
) -> None:
    for path in ("", "runs/x", "api/runs", "static/app.js", "api/nope"):
        async with http.get(ui.url + path) as response:
            policy = response.headers["Content-Security-Policy"]
            assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert "set-cookie" not in response.headers


async def test_the_app_mounts_in_another_starlette_service(ex: Executor) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    import aexec.web

    service = Starlette(routes=[Mount("/aexec", app=aexec.web.app(ex, ui_config()))])
    run = await ex.submit(small)
    await run.wait()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/aexec/api/runs",
        "raw_path": b"/aexec/api/runs",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "scheme": "http",
        "server": ("test", 80),
        "client": ("127.0.0.1", 1),
        "http_version": "1.1",
    }
    await service(scope, receive, send)
    assert sent[0]["status"] == 200
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert [r["run_id"] for r in body["runs"]] == [run.run_id]

    sent.clear()
    page = {**scope, "path": "/aexec/runs/x", "raw_path": b"/aexec/runs/x", "root_path": ""}
    await service(page, receive, send)
    shell = b"".join(m.get("body", b"") for m in sent[1:]).decode()
    assert 'src="/aexec/static/app.js"' in shell and 'data-root="/aexec"' in shell


async def test_the_timeline_has_an_attempt_for_each_step_that_ran(
    ui: Ui, http: aiohttp.ClientSession
) -> None:
    run = await ui.executor.submit(small)
    await run.wait()
    status, body = await get(http, f"{ui.url}api/runs/{run.run_id}/timeline")
    assert status == 200
    bars = body["attempts"]
    assert sorted(b["step"] for b in bars) == ["add", "first"]
    assert all(b["status"] == "succeeded" and b["end"] >= b["start"] for b in bars)
    assert {b["worker"] for b in bars} == {"embedded"}  # from the completions


async def test_runs_are_found_by_tag_and_a_launch_tags_its_run(
    ex: Executor, serve_ui: Any, http: aiohttp.ClientSession
) -> None:
    url = await serve_ui(ex, ui_config({"small": small}))
    untagged = await ex.submit(small)
    await untagged.wait()
    status, started = await post(
        http, f"{url}api/runs", {"pipeline": "small", "tags": {"team": "data"}, "wait": True}
    )
    assert status == 200
    _, page = await get(http, f"{url}api/runs?tag=team=data")
    assert [(r["run_id"], r["tags"]) for r in page["runs"]] == [
        (started["run_id"], {"team": "data"})
    ]
    status, error = await get(http, f"{url}api/runs?tag=oops")
    assert status == 400 and "KEY=VALUE" in error["error"]
    status, error = await post(http, f"{url}api/runs", {"pipeline": "small", "tags": {"": "x"}})
    assert status == 400 and "tag key" in error["error"]


async def test_workers_and_queues_show_the_embedded_worker_once_it_runs(
    ui: Ui, http: aiohttp.ClientSession
) -> None:
    assert await get(http, f"{ui.url}api/workers") == (200, {"workers": []})
    run = await ui.executor.submit(small)
    await run.wait()
    status, body = await get(http, f"{ui.url}api/workers?wait_ms=200")
    assert status == 200
    [worker] = body["workers"]
    assert (worker["name"], worker["queues"], worker["in_flight"]) == ("embedded", ["default"], 0)
    status, body = await get(http, f"{ui.url}api/queues?wait_ms=200")
    assert body == {"queues": [{"name": "default", "depth": 0, "consumers": 1, "in_flight": 0}]}


async def test_the_executors_credentials_are_masked_in_every_response(
    serve_ui: Any, http: aiohttp.ClientSession
) -> None:
    import aexec.testing

    secret = 'sign-me "quoted" s3cret'

    @step
    async def leaky() -> None:
        raise RuntimeError(f"could not use {secret} here")

    @pipeline
    def leaking() -> object:
        return leaky()

    async with aexec.testing.executor(secret=secret) as ex:
        url = await serve_ui(ex, ui_config())
        run = await ex.submit(leaking)
        await run.wait()
        for path in (f"api/runs/{run.run_id}", f"api/runs/{run.run_id}/steps/leaky"):
            async with http.get(url + path) as response:
                text = await response.text()
                assert response.status == 200
            body = json.loads(text)
            error = body["error"] if "/steps/" in path else body["steps"]["leaky"]["error"]
            assert error["message"] == "could not use *** here"
            assert "s3cret" not in text
        async with http.get(f"{url}api/runs/{run.run_id}/stream") as response:
            streamed = await response.text()
        assert "could not use *** here" in streamed and "s3cret" not in streamed
