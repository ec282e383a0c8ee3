"""A coordinator SIGKILLed in the middle of a 10,000-step run; another one finishes it.

`aexec run --broker` coordinates the run in its own process; it is killed with SIGKILL once
part of the run is done.  `aexec coordinator` on the same store then takes the run over when
the dead one's lease ends, consumes the completions still waiting in the dead one's reply
queue, re-dispatches what was lost, and finishes the run: every step succeeds exactly once.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.e2e.cluster import REPO, Cluster, show, use_backends, wait_for_file

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq]

CHORDS = str(REPO / "examples" / "chords.py")


@pytest.mark.parametrize(
    ("backends", "n"),
    [
        ("sqlite", 300),
        pytest.param("postgres", 900, marks=[pytest.mark.postgres, pytest.mark.s3]),
    ],
)
def test_a_killed_coordinators_run_is_taken_over_and_finished(
    cluster: Cluster, backends: str, n: int, request: pytest.FixtureRequest
) -> None:
    """With n=900 the run has 9,902 steps."""
    steps = 2 + 11 * n
    use_backends(cluster, backends, request)
    cluster.env.update({"AEXEC_LEASE": "2", "AEXEC_HEARTBEAT_INTERVAL": "0.5"})
    cluster.start_worker("w1", "-A", CHORDS)
    cluster.start_worker("w2", "-A", CHORDS)
    driver = cluster.start("run", CHORDS, "-p", f"n={n}", "--broker", cluster.broker)
    deadline = time.monotonic() + 60
    run_id = None
    done = 0
    while done < steps // 6:  # interrupt it part of the way through
        assert time.monotonic() < deadline, driver.output()
        assert driver.popen.poll() is None, "the run ended before it could be interrupted"
        if run_id is None:
            listed = cluster.aexec("runs", "list", "--json")
            if listed.stdout:
                run_id = json.loads(listed.stdout.splitlines()[0])["run_id"]
        else:
            report = show(cluster, run_id) or {"steps": {}}
            done = sum(s["status"] == "succeeded" for s in report["steps"].values())
        time.sleep(0.2)
    driver.popen.send_signal(signal.SIGKILL)
    driver.popen.wait(timeout=10)
    interrupted = show(cluster, run_id)
    assert interrupted is not None and interrupted["status"] == "running"
    assert done < steps

    cluster.start("coordinator", "-v", "--broker", cluster.broker)
    deadline = time.monotonic() + 180
    while (report := show(cluster, run_id)) is None or report["status"] == "running":
        assert time.monotonic() < deadline, f"not finished: {report and report['status']}"
        time.sleep(0.5)
    assert report["status"] == "succeeded", report["error"]
    assert report["result"] is True
    assert len(report["steps"]) == steps
    assert all(s["status"] == "succeeded" for s in report["steps"].values())

    logs = cluster.aexec("runs", "logs", run_id, "--json", timeout=60)
    events = [json.loads(line) for line in logs.stdout.splitlines()]
    successes: dict[str, int] = {}
    for event in events:
        if event["kind"] == "step_succeeded":
            successes[event["step"]] = successes.get(event["step"], 0) + 1
    assert len(successes) == steps and set(successes.values()) == {1}  # exactly once each
    assert sum(e["kind"] == "run_resumed" for e in events) == 1


@pytest.mark.postgres
@pytest.mark.s3
def test_large_outputs_cross_through_s3_and_never_through_the_broker_or_the_store(
    cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    use_backends(cluster, "postgres", request)
    word_count = str(REPO / "examples" / "word_count.py")
    cluster.start_worker("w1", "-A", word_count)
    code, report = cluster.run(word_count, "-p", "lines=20000", "-p", "shards=3")
    assert code == 0, report
    assert report["result"]["words"] == 20000 * 12
    assert all(s["status"] == "succeeded" for s in report["steps"].values())
    import boto3  # the test's own view of the bucket

    client = boto3.client(
        "s3",
        endpoint_url=cluster.env["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    bucket = cluster.env["AEXEC_OBJECTS"].removeprefix("s3://").split("/")[0]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    run_id = report["run_id"]
    assert f"outputs/outputs/{run_id}/corpus/1" in keys  # the 1 MB corpus: a claim check


@pytest.mark.postgres
def test_aexec_run_whose_run_was_taken_over_follows_it_and_exits_by_its_status(
    cluster: Cluster, postgres_dsn: str
) -> None:
    """`aexec run` is frozen (SIGSTOP) past its lease: a coordinator service takes its run
    over.  Thawed, it can no longer change the run, follows it in the store to its end,
    and exits 0 with the run's report, as if it had driven it all along."""
    gated = str(REPO / "tests" / "e2e" / "pipelines" / "gated.py")
    marker, release = cluster.home / "started", cluster.home / "release"
    cluster.env.update(
        {"AEXEC_STORE": postgres_dsn, "AEXEC_LEASE": "1", "AEXEC_HEARTBEAT_INTERVAL": "0.2"}
    )
    cluster.start_worker("w1", "-A", gated)
    driver = cluster.start(
        "run", gated, "-p", f"marker={marker}", "-p", f"release={release}", "--json",
        "--broker", cluster.broker,
    )  # fmt: skip
    wait_for_file(marker, driver)
    listed = cluster.aexec("runs", "list", "--json")
    run_id = json.loads(listed.stdout.splitlines()[0])["run_id"]
    driver.popen.send_signal(signal.SIGSTOP)  # a blocked loop: its lease lapses
    try:
        cluster.start("coordinator", "-v", "--broker", cluster.broker)
        deadline = time.monotonic() + 60
        while True:
            logs = cluster.aexec("runs", "logs", run_id, "--json")
            if any(json.loads(line)["kind"] == "run_resumed" for line in logs.stdout.splitlines()):
                break
            assert time.monotonic() < deadline, "the run was never taken over"
            time.sleep(0.2)
    finally:
        driver.popen.send_signal(signal.SIGCONT)
    release.touch()
    assert driver.wait(timeout=60) == 0, driver.output()
    report = json.loads("".join(driver.out))
    assert (report["run_id"], report["status"], report["result"]) == (
        run_id,
        "succeeded",
        "released",
    )
    stored = show(cluster, run_id)
    assert stored is not None and stored["status"] == "succeeded"
