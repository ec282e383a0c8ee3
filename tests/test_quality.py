"""The code base stays lint-clean, formatted and strictly typed (ruff, mypy --strict)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> list[str]:
    if (
        shutil.which(name) is None
        and subprocess.run(
            [sys.executable, "-m", name, "--version"], capture_output=True, check=False
        ).returncode
        != 0
    ):
        pytest.fail(f"{name} is not installed: install the test extra (pip install -e '.[test]')")
    return [sys.executable, "-m", name]


def test_ruff_finds_nothing_to_fix() -> None:
    result = subprocess.run(
        [*_tool("ruff"), "check", "aexec", "tests", "benchmarks", "examples"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_code_is_formatted() -> None:
    result = subprocess.run(
        [*_tool("ruff"), "format", "--check", "aexec", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_passes_on_the_package() -> None:
    result = subprocess.run(
        [*_tool("mypy"), "aexec"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
