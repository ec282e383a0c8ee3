"""The embedded benchmark samples run in a process of their own (benchmarks.isolated)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from benchmarks import isolated
from benchmarks.spec import BY_NAME

EMBEDDED = BY_NAME["embedded_chain_of_chords_1000"]


def test_an_aexec_sample_runs_in_another_process_and_reports_its_own_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.getcwd())
    sample = asyncio.run(isolated.sample(sys.executable, "aexec", EMBEDDED, tmp_path / "a"))
    assert 0 < sample.seconds < 120
    assert sample.extra["process_cpu_s"] > 0
    assert sample.extra["process_peak_rss_mb"] > 10
    assert list((tmp_path / "a").iterdir()), "the run's home is in the given directory"


def test_a_failing_sample_is_an_error_naming_its_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.getcwd())
    with pytest.raises(RuntimeError, match="isolated nosuch sample exited"):
        asyncio.run(isolated.sample(sys.executable, "nosuch", EMBEDDED, tmp_path / "b"))
