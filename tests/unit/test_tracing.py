"""Tracing is off unless the otel extra is installed and a tracer provider is set; the
traceparent of a run travels in its step messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from aexec import messages, tracing

REPO = Path(__file__).resolve().parents[2]


def test_without_a_tracer_provider_nothing_is_traced() -> None:
    assert tracing.load() is None  # this process never sets one


def test_without_the_otel_extra_runs_work_and_nothing_of_it_is_imported() -> None:
    script = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if not installed: importing it fails\n"
        "import asyncio, aexec, aexec.testing\n"
        "from aexec import step, pipeline\n"
        "@step\n"
        "def one() -> int:\n"
        "    return 1\n"
        "@pipeline\n"
        "def p():\n"
        "    return one()\n"
        "async def main():\n"
        "    async with aexec.testing.executor() as ex:\n"
        "        run = await ex.submit(p)\n"
        "        print(await run.result())\n"
        "asyncio.run(main())\n"
        "assert aexec.tracing.load() is None\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry.')]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"


def test_a_step_message_carries_a_traceparent_only_when_tracing() -> None:
    plain = messages.StepMessage("r", "k", 1, "n", b"", [], None, "q")
    traced = messages.StepMessage(
        "r", "k", 1, "n", b"", [], None, "q", "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    )
    assert len(plain.to_wire()) == 8  # the same bytes as before tracing existed
    assert messages.decode(bytes(traced.encode())) == traced
    assert messages.decode(bytes(plain.encode())) == plain
