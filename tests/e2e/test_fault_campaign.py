"""The fault campaign's short mode, as part of the suite: ``python -m benchmarks.faults
--short --seed N`` against a private RabbitMQ node and PostgreSQL cluster it starts itself,
with every fault kind, must report no violation (the violation lines are the failure)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.faults.postgres import ClusterUnavailable, postgres_bin
from benchmarks.faults.rabbit import NodeUnavailable, rabbitmq_bin
from tests.plugins.services import service_unavailable

pytestmark = pytest.mark.e2e

REPO = Path(__file__).parents[2]
SEED = int(os.environ.get("AEXEC_FAULTS_SEED", "8"))
TIMEOUT = 900.0  # the short mode takes about 2.5 minutes; a loaded machine, much longer


def test_the_short_fault_campaign_finds_no_violation() -> None:
    try:
        rabbitmq_bin()
        postgres_bin()
    except (NodeUnavailable, ClusterUnavailable) as exc:
        service_unavailable(f"the fault campaign cannot run: {exc}")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Its own work directory, under the system's temp (the cluster's postgres user must
    # reach it: pytest's are private to their user), removed afterwards.
    command = [sys.executable, "-m", "benchmarks.faults", "--short", "--seed", str(SEED)]
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    lines = (done.stdout + done.stderr).splitlines()
    summary = [line for line in lines if line.startswith(f"seed {SEED} ")]
    violations = [line for line in lines if line.startswith("VIOLATION")]
    if done.returncode == 2:
        pytest.fail("the fault campaign could not run:\n" + "\n".join(lines[-20:]), pytrace=False)
    assert done.returncode == 0 and not violations, "\n".join(violations + summary + lines[-5:])
    assert summary, "\n".join(lines[-20:])
    assert " violations 0" in summary[0]
