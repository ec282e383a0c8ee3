"""``aexec ui`` and ``aexec coordinator --ui`` as users start them: the printed link, the
API behind it, a launch, a clean exit on SIGTERM, and one-line errors for bad input."""

from __future__ import annotations

import json
import re
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import REPO, Cluster, Process, command, make_env

pytestmark = pytest.mark.e2e

LINK = re.compile(r"aexec UI on (http://\S+/)(?:#token=(\S+))?")


def start_ui(home: Path, *args: str, env: dict[str, str] | None = None) -> Process:
    return Process(command(*args), env or make_env(home), home)


def address(process: Process) -> tuple[str, str | None]:
    match = LINK.search(process.wait_for_line("aexec UI on"))
    assert match is not None
    return match.group(1), match.group(2)


def call(url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_aexec_ui_serves_the_api_launches_a_listed_pipeline_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    ui = start_ui(tmp_path, "ui", "--port", "0", "-A", str(REPO / "examples" / "fan_in.py"))
    try:
        url, token = address(ui)
        assert url.startswith("http://127.0.0.1:") and token
        assert call(url + "api/runs") == (200, {"runs": [], "offset": 0, "limit": 50, "next": None})
        status, _ = call(url + "api/runs", {"pipeline": "fan_in"})
        assert status == 401
        status, report = call(
            url + "api/runs", {"pipeline": "fan_in", "params": {"n": 10}, "wait": True}, token
        )
        assert (status, report["status"], report["result"]) == (200, "succeeded", 90)
        ui.popen.send_signal(signal.SIGTERM)
        assert ui.wait() == 0, ui.output()
    finally:
        ui.stop()
    # the run is in the store every command reads
    listed = start_ui(tmp_path, "runs", "list", "--json")
    assert listed.wait() == 0
    assert json.loads("".join(listed.out))["run_id"] == report["run_id"]


def test_a_token_from_the_environment_is_not_printed(tmp_path: Path) -> None:
    env = {**make_env(tmp_path), "AEXEC_UI_TOKEN": "s3cret-t0ken-for-the-ui"}
    ui = start_ui(tmp_path, "ui", "--port", "0", env=env)
    try:
        url, shown = address(ui)
        assert shown is None
        assert call(url + "api/runs/abcdef/cancel", {}, "s3cret-t0ken-for-the-ui")[0] == 404
        ui.popen.send_signal(signal.SIGTERM)
        assert ui.wait() == 0
        assert "s3cret" not in ui.output()
    finally:
        ui.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--port", "70000"), "--port must be 0..65535"),
        (("--host", "no-such-host.invalid"), "cannot serve the UI on no-such-host.invalid"),
        (("-A", "missing.py"), "missing.py"),
    ],
)
def test_bad_ui_options_are_one_line_errors(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    ui = start_ui(tmp_path, "ui", "--port", "0", *args)
    assert ui.wait() == 2
    lines = "".join(ui.err).splitlines()
    assert len(lines) == 1 and lines[0].startswith("aexec: error:") and message in lines[0]


def test_a_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    first = start_ui(tmp_path, "ui", "--port", "0")
    try:
        url, _ = address(first)
        port = url.rstrip("/").rsplit(":", 1)[1]
        second = start_ui(tmp_path, "ui", "--port", port)
        assert second.wait() == 2
        assert "cannot serve the UI on 127.0.0.1:" in "".join(second.err)
    finally:
        first.stop()


@pytest.mark.rabbitmq
@pytest.mark.postgres
async def test_coordinator_ui_over_postgres_and_rabbitmq_shows_workers_and_drives_launches(
    cluster: Cluster, postgres_dsn: str
) -> None:
    pipelines = str(REPO / "examples" / "fan_in.py")
    cluster.start_worker("ui-worker", "-A", pipelines)
    coordinator = cluster.start(
        "coordinator",
        "--ui",
        "--port",
        "0",
        "-A",
        pipelines,
        "--broker",
        cluster.broker,
        "--store",
        postgres_dsn,
    )
    url, token = address(coordinator)
    status, report = call(
        url + "api/runs", {"pipeline": "fan_in", "params": {"n": 5}, "wait": True}, token
    )
    assert (status, report["status"], report["result"]) == (200, "succeeded", 20)
    status, body = call(url + "api/workers")
    assert status == 200 and [w["name"] for w in body["workers"]] == ["ui-worker"]
    status, body = call(url + "api/queues")
    assert status == 200
    [queue] = body["queues"]
    assert (queue["name"], queue["depth"], queue["consumers"]) == ("default", 0, 1)
    status, runs = call(url + "api/runs?pipeline=fan_in")
    assert [r["run_id"] for r in runs["runs"]] == [report["run_id"]]
    assert runs["runs"][0]["steps"] == {"succeeded": 6}
    coordinator.popen.send_signal(signal.SIGTERM)
    assert coordinator.wait() == 0, coordinator.output()


def test_a_run_of_another_process_appears_live_on_the_runs_stream(tmp_path: Path) -> None:
    ui = start_ui(tmp_path, "ui", "--port", "0")
    try:
        url, _ = address(ui)
        with urllib.request.urlopen(url + "api/runs/stream", timeout=30) as stream:

            def next_page() -> dict[str, Any]:
                while True:
                    line = stream.readline().decode()
                    if line.startswith("data: "):
                        page: dict[str, Any] = json.loads(line.removeprefix("data: "))
                        return page

            assert next_page()["runs"] == []
            other = start_ui(tmp_path, "run", str(REPO / "examples" / "fan_in.py"), "--json")
            assert other.wait() == 0, other.output()
            report = json.loads("".join(other.out))
            while True:  # pages as the run goes: pending, running, succeeded
                [row] = next_page()["runs"]
                assert row["run_id"] == report["run_id"]
                if row["status"] == "succeeded":
                    break
            assert row["steps"] == {"succeeded": 101}
            ui.popen.send_signal(signal.SIGTERM)  # with the stream still open
            assert ui.wait() == 0, ui.output()
    finally:
        ui.stop()
