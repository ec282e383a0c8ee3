"""`aexec runs logs --follow` streams a run's events live, from another process, to the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SLOW = """
import asyncio
from pathlib import Path
from aexec import pipeline, step

@step
async def tick(i: int, gate: str) -> int:
    while not Path(gate).exists():  # the test opens the gate once the follower is attached
        await asyncio.sleep(0.02)
    return i

@pipeline
def slow(gate: str) -> object:
    prev = tick.alias("t0")(0, gate)
    for i in range(1, 5):
        prev = tick.alias(f"t{i}")(prev, gate)
    return prev
"""


def test_runs_logs_follow_prints_events_as_they_happen_and_stops_at_the_end(
    tmp_path: Path,
) -> None:
    (tmp_path / "slow.py").write_text(SLOW)
    gate = tmp_path / "gate"
    env = {**os.environ, "AEXEC_HOME": str(tmp_path / "home")}
    aexec = [sys.executable, "-m", "aexec"]
    run = subprocess.Popen(
        [*aexec, "run", str(tmp_path / "slow.py"), "-p", f"gate={gate}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    follower = None
    try:
        run_id = None
        for _ in range(500):
            listed = subprocess.run(
                [*aexec, "runs", "list", "--json"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if listed.stdout:
                run_id = json.loads(listed.stdout.splitlines()[0])["run_id"]
                break
        assert run_id is not None, "the run never appeared"
        follower = subprocess.Popen(
            [*aexec, "runs", "logs", run_id, "--follow", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())  # attached, and the run is still going
        assert first["kind"] == "run_submitted"
        gate.touch()
        rest = [json.loads(line) for line in follower.stdout]
        assert follower.wait(timeout=30) == 0
        kinds = [first["kind"], *(e["kind"] for e in rest)]
        assert kinds[-1] == "run_succeeded"
        assert kinds.count("step_succeeded") == 5
        seqs = [first["seq"], *(e["seq"] for e in rest)]
        assert seqs == sorted(set(seqs))
        assert run.wait(timeout=30) == 0
    finally:
        for process in (run, follower):
            if process is not None:
                if process.poll() is None:
                    process.kill()
                process.communicate()  # reaps it and closes its pipes
