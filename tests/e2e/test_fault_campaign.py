"""The seeded fault campaign, short mode, with a fixed seed: faults of every kind while a
few hundred runs are in flight, then every invariant of the delivery contract holds.

``python -m benchmarks.faults --short --seed SEED`` starts its own RabbitMQ node and
PostgreSQL cluster (it needs ``rabbitmq-server`` and PostgreSQL's ``initdb``/``pg_ctl``
installed, not running), three workers and two coordinator services, and takes about
four minutes here.  When it fails, its violations are in the assertion message and its
logs, ledger and ``report.json`` in the test's temporary directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.faults.postgres import ClusterUnavailable, postgres_bin
from benchmarks.faults.rabbit import NodeUnavailable, rabbitmq_bin
from benchmarks.faults.schedule import KINDS
from tests.plugins.services import service_unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]
SEED = 8
TIMEOUT = 15 * 60.0  # the campaign bounds every phase itself; this only stops a hang


def faults_by_kind(summary: str) -> dict[str, int]:
    """``{kind: count}`` from the summary line's ``faults N (kind n, ...)``."""
    found = re.search(r"faults \d+ \(([^)]*)\)", summary)
    assert found, summary
    pairs = (item.rsplit(" ", 1) for item in found.group(1).split(", "))
    return {kind: int(count) for kind, count in pairs}


def test_the_short_campaign_injects_every_kind_of_fault_and_finds_no_violation(
    tmp_path: Path,
) -> None:
    try:
        rabbitmq_bin()
        postgres_bin()
    except (NodeUnavailable, ClusterUnavailable) as exc:
        service_unavailable(str(exc))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEXEC_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    work = tmp_path / "campaign"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.faults", "--short", "--seed", str(SEED),
         "--workdir", str(work), "--keep"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    output = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-5000:]}"
    assert proc.stdout.strip(), output
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"seed {SEED} (short): "), output
    counts = faults_by_kind(summary)
    assert set(counts) == set(KINDS), output
    assert all(counts[kind] > 0 for kind in KINDS), output
    assert proc.returncode == 0, output
    assert "violations 0;" in summary, output
