"""Real-service plumbing: skip locally when a service is absent, fail under ``CI=true``."""

from __future__ import annotations

import os

import pytest

from benchmarks.faults.net import port_open

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_unavailable(reason: str) -> None:
    """Skip the test (locally) or fail it (in CI) because a service it needs is absent."""
    if IN_CI:
        pytest.fail(f"required service unavailable under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


__all__ = ["IN_CI", "port_open", "service_unavailable"]
