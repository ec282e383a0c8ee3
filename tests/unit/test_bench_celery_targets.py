"""Issue 13's benchmark targets, read off one run's rows (benchmarks.table)."""

from __future__ import annotations

from typing import Any

from benchmarks import table


def row(workload: str, system: str, seconds: float | None, status: str = "ok") -> dict[str, Any]:
    found: dict[str, Any] = {"workload": workload, "system": system, "seconds": seconds}
    found["status"] = status
    if status == "timeout":
        found["cap"] = 600.0
    return found


def test_the_celery_targets_are_ratios_in_one_run_and_a_timeout_is_a_lower_bound() -> None:
    rows = [
        row("chain_of_chords_100", "celery-workers", 4.0),
        row("chain_of_chords_100", "celery", 44.0),
        row("chain_of_chords_100", "celery-dyrygent", None, "timeout"),
        row("chain_of_chords_100", "celery-floor", 2.0),
        row("chain_of_chords_1000", "celery-workers", 40.0),
    ]
    found = table.targets(rows)
    canvas = found["celery_workers_vs_celery_chain_of_chords_100"]
    assert (canvas["value"], canvas["lower_bound"], canvas["met"]) == (11.0, False, True)
    dyrygent = found["celery_workers_vs_celery_dyrygent_chain_of_chords_100"]
    assert (dyrygent["value"], dyrygent["lower_bound"], dyrygent["met"]) == (150.0, True, True)
    assert found["celery_workers_over_floor_chain_of_chords_100"]["value"] == 2.0
    assert found["celery_over_floor_chain_of_chords_100"]["value"] == 22.0
    assert "celery_dyrygent_over_floor_chain_of_chords_100" not in found  # it timed out
    assert found["celery_workers_chain_of_chords_1000"] == {"seconds": 40.0, "met": True}
    text = "\n".join(table.targets_text(found))
    assert "celery-workers vs celery on chain_of_chords_100: x11.0 (target >= x10): met" in text
    assert "vs celery-dyrygent on chain_of_chords_100: at least x150.0" in text


def test_a_missed_celery_target_says_so() -> None:
    rows = [
        row("chain_of_chords_100", "celery-workers", 6.0),
        row("chain_of_chords_100", "celery", 45.0),
        row("chain_of_chords_1000", "celery-workers", None, "timeout"),
    ]
    found = table.targets(rows)
    assert found["celery_workers_vs_celery_chain_of_chords_100"]["met"] is False
    assert found["celery_workers_chain_of_chords_1000"]["met"] is False
    assert "celery-workers chain_of_chords_1000: did NOT finish" in table.targets_text(found)
