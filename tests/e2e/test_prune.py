"""``aexec runs prune``: old finished runs go with their outputs, never a run still running.

Runs are real ``aexec run`` processes (embedded: no broker) on the embedded defaults
(SQLite, a directory of objects) and on PostgreSQL with the S3 server; their outputs are
larger than the inline threshold, so each run leaves objects behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import TIMEOUT, Cluster, wait_for_file
from tests.plugins.s3 import s3_client

pytestmark = pytest.mark.e2e

PIPELINES = Path(__file__).resolve().parent / "pipelines"
BIG = str(PIPELINES / "big.py")
HELD = str(PIPELINES / "held.py")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    home = tmp_path / "home"
    home.mkdir()
    cluster = Cluster(home, None, "")
    cluster.env["AEXEC_INLINE_THRESHOLD"] = "1024"
    try:
        yield cluster
    finally:
        for process in cluster.processes:
            process.stop()


def object_lister(
    cluster: Cluster, backends: str, request: pytest.FixtureRequest
) -> Callable[[str], list[str]]:
    """Point the cluster at ``backends``; return a function listing a run's object keys."""
    if backends == "sqlite":
        root = cluster.home / "objects"
        return lambda run_id: sorted(
            str(p.relative_to(root)) for p in root.glob(f"outputs/{run_id}/**/*") if p.is_file()
        )
    endpoint = request.getfixturevalue("s3_env")
    bucket = request.getfixturevalue("s3_bucket")
    cluster.env.update(
        {
            "AEXEC_STORE": request.getfixturevalue("postgres_dsn"),
            "AEXEC_OBJECTS": f"s3://{bucket}/aexec",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }
    )
    client = s3_client(endpoint)

    def listed(run_id: str) -> list[str]:
        reply = client.list_objects_v2(Bucket=bucket, Prefix=f"aexec/outputs/{run_id}/")
        return sorted(item["Key"] for item in reply.get("Contents", []))

    return listed


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize(
    "backends",
    ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.s3])],
)
def test_prune_deletes_old_finished_runs_with_their_objects_and_never_a_running_one(
    cluster: Cluster, backends: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    objects_of = object_lister(cluster, backends, request)
    finished = []
    for _ in range(2):
        proc = cluster.aexec("run", BIG, "--json")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["result"] == [10_000, 10_000]
        finished.append(report["run_id"])
        assert len(objects_of(report["run_id"])) == 2  # a and b, each an object

    log, release = tmp_path / "held.log", tmp_path / "release"
    held = cluster.start("run", HELD, "-p", f"log={log}", "-p", f"release={release}", "--json")
    wait_for_file(log, held)  # the held run is running now

    recent = cluster.aexec("runs", "prune", "--older-than", "1h", "--json")
    assert (recent.returncode, recent.stdout) == (0, ""), recent.stderr
    assert "deleted 0 runs" in recent.stderr

    dry = cluster.aexec("runs", "prune", "--older-than", "0s", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert sorted((r["run_id"], r["deleted"]) for r in json_lines(dry.stdout)) == sorted(
        (run_id, False) for run_id in finished
    )
    assert all(len(objects_of(run_id)) == 2 for run_id in finished)

    pruned = cluster.aexec("runs", "prune", "--older-than", "0s", "--json")
    assert pruned.returncode == 0, pruned.stderr
    lines = json_lines(pruned.stdout)
    assert sorted(r["run_id"] for r in lines) == sorted(finished)
    assert all((r["deleted"], r["objects"], r["status"]) == (True, 2, "succeeded") for r in lines)
    for run_id in finished:
        assert objects_of(run_id) == []
        shown = cluster.aexec("runs", "show", run_id)
        assert shown.returncode == 2 and "no run matches" in shown.stderr

    listed = json_lines(cluster.aexec("runs", "list", "--json").stdout)
    assert [(r["pipeline"], r["status"]) for r in listed] == [("held", "running")]
    release.touch()
    assert held.wait(TIMEOUT) == 0, held.output()
    assert json.loads("".join(held.out))["status"] == "succeeded"

    human = cluster.aexec("runs", "prune", "--older-than", "0s")
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith("deleted run ") and "(held, succeeded, finished" in human.stdout
    assert cluster.aexec("runs", "list", "--json").stdout == ""


def test_prune_refuses_a_duration_without_a_unit(cluster: Cluster) -> None:
    proc = cluster.aexec("runs", "prune", "--older-than", "30")
    assert proc.returncode == 2
    assert "30d, 12h, 90m or 45s" in proc.stderr
    assert not (cluster.home / "aexec.db").exists()  # refused before opening anything
