"""The control commands as users run them, in real subprocesses: ``aexec run --tag``,
queued runs in ``aexec runs list``, ``aexec runs rerun`` and ``aexec runs cancel``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest

from aexec.plan import StepSpec, build
from aexec.store import RunRecord
from aexec.store.sqlite import SqliteStore
from tests.e2e.test_cli import ARITH, SLOW, _command, _env, aexec

pytestmark = pytest.mark.e2e


def test_run_records_its_tags_and_refuses_malformed_ones(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ran = aexec(
        home, "run", ARITH, "-p", "n=3", "--tag", "tenant=acme", "--tag", "team=data", "--json"
    )
    assert ran.code == 0, ran.err
    run_id = ran.json()["run_id"]

    async def tags() -> dict[str, str]:
        async with SqliteStore(home / "aexec.db") as store:
            record = await store.get_run(run_id)
            assert record is not None
            return record.tags

    assert asyncio.run(tags()) == {"tenant": "acme", "team": "data"}
    bad = aexec(home, "run", ARITH, "-p", "n=3", "--tag", "tenant")
    assert bad.code == 2
    assert bad.err.strip().endswith("malformed tag 'tenant': expected --tag KEY=VALUE")
    assert "Traceback" not in bad.err


def test_runs_list_shows_runs_not_started_as_queued_with_their_position(tmp_path: Path) -> None:
    home = tmp_path / "home"
    plan = build("waiting", [StepSpec("a", "noop")])
    now = time.time()

    async def queue_up() -> None:
        async with SqliteStore(home / "aexec.db") as store:
            for run_id, priority, age in [("low", 0, 30.0), ("high", 5, 10.0), ("mid", 2, 20.0)]:
                record = RunRecord(run_id, "waiting", plan.digest, priority=priority)
                record.created_at = now - age
                await store.create_run(record, plan)

    asyncio.run(queue_up())
    listed = aexec(home, "runs", "list", "--json")
    assert listed.code == 0, listed.err
    positions = {line["run_id"]: line["position"] for line in listed.json_lines()}
    assert positions == {"high": 1, "mid": 2, "low": 3}
    table = aexec(home, "runs", "list")
    assert "queued #1" in table.out and "queued #3" in table.out


FLAKY = str(Path(__file__).resolve().parent / "pipelines" / "flaky_file.py")


def test_runs_rerun_from_failure_runs_only_what_failed_and_records_the_parent(
    tmp_path: Path,
) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    (work / "broken").touch()
    failed = aexec(home, "run", FLAKY, "-p", f"where={work}", "--json")
    assert failed.code == 1
    parent = failed.json()["run_id"]
    assert (work / "ran.log").read_text().split() == ["fetch", "check"]
    (work / "broken").unlink()

    no_file = aexec(home, "runs", "rerun", parent, "--from-failure")
    assert no_file.code == 2
    assert "needs the pipeline's code" in no_file.err and "Traceback" not in no_file.err
    unknown = aexec(home, "runs", "rerun", "feedbeef", "--file", FLAKY)
    assert unknown.code == 2 and "no run 'feedbeef' to rerun" in unknown.err

    rerun = aexec(
        home,
        "runs",
        "rerun",
        parent[:8],
        "--from-failure",
        "--file",
        FLAKY,
        "-p",
        "scale=3",
        "--json",
    )
    assert rerun.code == 0, rerun.err
    report = rerun.json()
    assert report["result"] == 63
    assert report["parent"] == parent
    assert report["steps"] == {
        "fetch": {"status": "succeeded", "attempts": 0},  # reused, not run
        "check": {"status": "succeeded", "attempts": 1},
        "report": {"status": "succeeded", "attempts": 1},
    }
    assert (work / "ran.log").read_text().split() == ["fetch", "check", "check", "report"]
    shown = aexec(home, "runs", "show", report["run_id"])
    assert parent in shown.out


def test_runs_cancel_ends_a_run_another_process_drives_and_records_the_reason(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    marker = tmp_path / "started"
    proc = subprocess.Popen(
        _command("run", SLOW, "-p", f"marker={marker}", "--json"),
        cwd=tmp_path,
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():  # the step has started (a file: no event to await)
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the step never started"
            time.sleep(0.01)
        run_id = aexec(home, "runs", "list", "--json").json_lines()[0]["run_id"]
        cancelled = aexec(home, "runs", "cancel", run_id[:8], "--reason", "not needed any more")
        assert cancelled.code == 0, cancelled.err
        assert cancelled.out.strip() == f"run {run_id} cancelled"
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    report = json.loads(out)
    assert report["status"] == "cancelled"
    assert report["steps"] == {"wait_long": {"status": "cancelled", "attempts": 1}}
    logs = aexec(home, "runs", "logs", run_id, "--json").json_lines()
    (ended,) = [e for e in logs if e["kind"] == "run_cancelled"]
    assert ended["data"]["error"] == "run cancelled: not needed any more"

    again = aexec(home, "runs", "cancel", run_id)
    assert again.code == 0
    assert again.out.strip() == f"run {run_id} already ended cancelled: nothing to cancel"
    unknown = aexec(home, "runs", "cancel", "feedbeef")
    assert unknown.code == 2 and "no run matches 'feedbeef'" in unknown.err
    assert "Traceback" not in unknown.err
