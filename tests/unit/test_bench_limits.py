"""The limits benchmarks (issue 9): the broker one runs the variants it is asked for, against
unlimited; the offline one drives every step to its end under its cap."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from benchmarks import limits, limits_offline


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


def test_offline_rounds_take_one_slot_per_capped_step_and_keep_to_the_cap() -> None:
    for variant, cap in (("per_tenant_2", 2), ("global_64", 64)):
        elapsed, tally = asyncio.run(limits_offline.one_round(variant, 3, 100, 5))
        assert elapsed > 0
        assert tally.takes == 300  # every capped step asks the store once, and only once
        most = tally.most_per_tenant if variant == "per_tenant_2" else tally.most_in_flight
        assert most == min(cap, 100)  # filled up to the cap, never past it
    _, free = asyncio.run(limits_offline.one_round("unlimited", 3, 100, 5))
    assert free.takes == 0 and free.most_in_flight == 300


def test_offline_main_prints_each_variant_and_refuses_a_group_of_zero(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert limits_offline.main(["--tenants", "2", "--steps", "10", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    for variant in ("unlimited", "per_tenant_2", "global_64"):
        assert f"\n{variant} " in out
    with pytest.raises(SystemExit) as exc:
        limits_offline.main(["--group", "0"])
    assert exc.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_step_ms_makes_every_step_await_that_long(capsys: pytest.CaptureFixture[str]) -> None:
    # Each of the tenant's steps sleeps 30 ms: even all at once, the run takes that long.
    slow = asyncio.run(limits.one_round("unlimited", limits.free, 1, 3, step_ms=30.0))
    assert slow["wall_s"] >= 0.03
    argv = ["--tenants", "2", "--steps", "3", "--repeat", "1", "--step-ms", "5"]
    assert limits.main([*argv, "--variants", "global_32"]) == 0
    out = capsys.readouterr().out
    assert "2 tenants x 3 5 ms steps" in out and "\nglobal_32 " in out
