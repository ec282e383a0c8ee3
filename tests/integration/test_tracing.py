"""OpenTelemetry across a real RabbitMQ hop: a trace per run, a span per step attempt that
is a child of its run's span (the W3C traceparent travels with the step message), and the
step's own spans nested inside, collected by the SDK's in-memory exporter.

The run goes in a process of its own (``tests/integration/otel/traced_run.py``): a tracer
provider is global to a process, and every coordinator and worker started after it was
set traces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.rabbitmq

REPO = Path(__file__).resolve().parents[2]


def traced_run(amqp_url: str, amqp_prefix: str, tmp_path: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEXEC_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.integration.otel.traced_run",
            amqp_url,
            amqp_prefix,
            str(tmp_path),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_a_run_is_one_trace_with_a_span_per_step_attempt_nesting_the_step_s_own_spans(
    amqp_url: str, amqp_prefix: str, tmp_path: Path
) -> None:
    result = traced_run(amqp_url, amqp_prefix, tmp_path)
    spans = result["spans"]
    by_name = {s["name"]: s for s in spans}
    run = by_name["aexec run traced"]
    assert run["attributes"]["aexec.run_id"] == result["ok"]
    assert run["attributes"]["aexec.status"] == "succeeded"
    assert run["parent_id"] is None
    fetch, crunch = by_name["aexec step fetch"], by_name["aexec step crunch"]
    for step, key in ((fetch, "fetch"), (crunch, "crunch")):
        assert step["trace_id"] == run["trace_id"]  # one trace per run, across the hop
        assert step["parent_id"] == run["span_id"]
        assert step["kind"] == "CONSUMER"
        assert step["attributes"]["aexec.step_key"] == key
        assert step["attributes"]["aexec.attempt"] == 1
        assert step["attributes"]["aexec.worker"] == "traced-worker"
    # The steps' own spans, an async step's and a sync step's (in a thread), nest inside.
    assert by_name["fetch rows"]["parent_id"] == fetch["span_id"]
    assert by_name["crunch numbers"]["parent_id"] == crunch["span_id"]
    assert by_name["crunch numbers"]["trace_id"] == run["trace_id"]


def test_a_failed_step_s_span_records_its_exception_and_the_run_span_its_failure(
    amqp_url: str, amqp_prefix: str, tmp_path: Path
) -> None:
    spans = traced_run(amqp_url, amqp_prefix, tmp_path)["spans"]
    by_name = {s["name"]: s for s in spans}
    run, broken = by_name["aexec run failing"], by_name["aexec step broken"]
    assert broken["parent_id"] == run["span_id"] and broken["trace_id"] == run["trace_id"]
    assert broken["status"] == "ERROR" and "exception" in broken["events"]
    assert run["status"] == "ERROR" and run["attributes"]["aexec.status"] == "failed"
    other = by_name["aexec run traced"]
    assert other["trace_id"] != run["trace_id"]  # a trace per run
