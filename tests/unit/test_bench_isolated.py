"""The embedded benchmark samples run in a process of their own (benchmarks.isolated)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from benchmarks import isolated, runner
from benchmarks.spec import BY_NAME, Workload
from benchmarks.systems import BenchConfig, Sample, System

EMBEDDED = BY_NAME["embedded_chain_of_chords_1000"]


def test_an_aexec_sample_runs_in_another_process_and_reports_its_own_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.getcwd())
    sample = asyncio.run(isolated.sample(sys.executable, "aexec", EMBEDDED, tmp_path / "a"))
    assert 0 < sample.seconds < 120
    assert sample.extra["process_cpu_s"] > 0
    # the table's CPU per step is that process's, not the benchmark's idle one
    assert sample.cpu_seconds == {"process": sample.extra["process_cpu_s"]}
    row = runner.result_row(EMBEDDED, "aexec", [sample])
    assert row["cpu_ms_per_step"]["process"] > 0
    assert sample.extra["process_peak_rss_mb"] > 10
    assert list((tmp_path / "a").iterdir()), "the run's home is in the given directory"


def test_a_failing_sample_is_an_error_naming_its_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.getcwd())
    with pytest.raises(RuntimeError, match="isolated nosuch sample exited"):
        asyncio.run(isolated.sample(sys.executable, "nosuch", EMBEDDED, tmp_path / "b"))


class _Recording(System):
    """A system that records when it is started and what it runs."""

    name = "recording"
    log: list[str] = []

    async def __aenter__(self) -> System:
        self.log.append("start")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.log.append("stop")

    async def run(self, workload: Workload) -> Sample:
        self.log.append(workload.name)
        return Sample(0.01)


def test_embedded_workloads_run_before_any_system_starts_its_workers(tmp_path: Path) -> None:
    _Recording.log = []
    config = BenchConfig(broker="amqp://unused", prefix="t", workdir=tmp_path)
    chosen = [BY_NAME["roundtrip"], EMBEDDED]
    rows, described = asyncio.run(
        runner.run_all([_Recording], config, chosen, quick=True, progress=lambda _: None)
    )
    embedded_runs = [EMBEDDED.name] * EMBEDDED.quick_repetitions
    assert _Recording.log[: len(embedded_runs) + 1] == [*embedded_runs, "start"]
    assert _Recording.log[-1] == "stop"
    assert [row["workload"] for row in rows] == ["roundtrip", EMBEDDED.name]  # as chosen
    assert "recording" in described
