"""The limits benchmark (issue 9) runs the variants it is asked for, against unlimited."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from benchmarks import limits


def test_variants_always_include_unlimited_first_and_refuse_unknown_names() -> None:
    assert limits._variants("global_32, global_100") == ("unlimited", "global_32", "global_100")
    assert limits._variants("global_64,unlimited,global_64") == ("unlimited", "global_64")
    with pytest.raises(argparse.ArgumentTypeError, match="nosuch"):
        limits._variants("global_64,nosuch")


def test_each_variant_asked_for_gets_its_rounds_and_its_ratios_to_unlimited() -> None:
    args = argparse.Namespace(tenants=3, steps=20, repeat=2, variants=("unlimited", "global_32"))
    results = asyncio.run(limits.measure(args, limits.aexec.testing.executor))
    assert list(results) == ["unlimited", "global_32"]
    capped = results["global_32"]
    assert capped["steps_per_s"] > 0
    assert len(capped["cpu_vs_unlimited_each"]) == 2
    assert capped["throughput_vs_unlimited"] > 0
    assert "cpu_vs_unlimited" not in results["unlimited"]
