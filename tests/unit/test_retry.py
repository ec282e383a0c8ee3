"""Retry policy: exponential backoff, capped, with equal jitter; validated; on the wire."""

from __future__ import annotations

from typing import Any

import pytest

from aexec.errors import PlanError
from aexec.retry import RetryPolicy


def test_defaults_mean_no_retry() -> None:
    policy = RetryPolicy()
    assert policy.retries == 0
    assert policy.max_attempts == 1


def test_max_attempts_counts_the_first_attempt() -> None:
    assert RetryPolicy(retries=3).max_attempts == 4


def test_delay_without_jitter_doubles_each_attempt() -> None:
    policy = RetryPolicy(retries=5, backoff=0.5, backoff_max=1000.0, jitter=False)
    assert [policy.delay(n, 0.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_delay_without_jitter_ignores_the_sample() -> None:
    policy = RetryPolicy(retries=1, backoff=2.0, jitter=False)
    assert policy.delay(1, 0.0) == policy.delay(1, 0.999) == 2.0


def test_delay_is_capped_at_backoff_max() -> None:
    policy = RetryPolicy(retries=20, backoff=1.0, backoff_max=10.0, jitter=False)
    assert [policy.delay(n, 0.0) for n in (4, 5, 6, 20)] == [8.0, 10.0, 10.0, 10.0]


def test_delay_stays_capped_for_huge_attempt_numbers() -> None:
    policy = RetryPolicy(retries=10_000, backoff=1.0, backoff_max=30.0, jitter=False)
    assert policy.delay(5_000, 0.0) == 30.0
    assert RetryPolicy(retries=10_000, backoff=1.0, backoff_max=30.0).delay(5_000, 0.5) == 22.5


@pytest.mark.parametrize("attempt", [1, 2, 3, 7, 12])
@pytest.mark.parametrize("sample", [0.0, 0.25, 0.5, 0.999999])
def test_jittered_delay_stays_between_half_and_full_delay(attempt: int, sample: float) -> None:
    policy = RetryPolicy(retries=20, backoff=0.75, backoff_max=100.0)
    full = min(100.0, 0.75 * 2 ** (attempt - 1))
    delay = policy.delay(attempt, sample)
    assert full / 2 <= delay <= full
    assert delay == pytest.approx(full / 2 + sample * full / 2)


def test_jittered_delay_grows_with_the_sample() -> None:
    policy = RetryPolicy(retries=1, backoff=4.0)
    assert policy.delay(1, 0.0) == 2.0
    assert policy.delay(1, 0.5) == 3.0


def test_zero_backoff_retries_immediately() -> None:
    assert RetryPolicy(retries=3, backoff=0.0).delay(3, 0.9) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retries": -1},
        {"retries": 1.5},
        {"retries": True},
        {"retries": "3"},
        {"backoff": -0.1},
        {"backoff": "1"},
        {"backoff": False},
        {"backoff": float("nan")},
        {"backoff_max": -1.0},
        {"backoff_max": None},
        {"backoff_max": float("nan")},
        {"jitter": "yes"},
        {"jitter": 1},
    ],
    ids=repr,
)
def test_invalid_policies_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(PlanError):
        RetryPolicy(**kwargs)


def test_integer_durations_are_accepted() -> None:
    assert RetryPolicy(retries=1, backoff=2, backoff_max=10).delay(1, 0.0) == 1.0


@pytest.mark.parametrize(
    "policy",
    [
        RetryPolicy(),
        RetryPolicy(retries=3, backoff=0.25, backoff_max=5.0, jitter=False),
        RetryPolicy(retries=10, backoff=0.0, backoff_max=0.0, jitter=True),
    ],
    ids=repr,
)
def test_wire_round_trip(policy: RetryPolicy) -> None:
    assert RetryPolicy.from_wire(policy.to_wire()) == policy


def test_wire_form_is_the_same_for_equal_policies() -> None:
    # The wire form feeds the plan digest: equal policies must have equal wire forms.
    assert RetryPolicy(1, 2, 10).to_wire() == RetryPolicy(1, 2.0, 10.0).to_wire()
    assert repr(RetryPolicy(1, 2, 10).to_wire()) == repr(RetryPolicy(1, 2.0, 10.0).to_wire())


@pytest.mark.parametrize(
    "data",
    [
        None,
        "policy",
        [],
        [1, 1.0, 60.0],
        [1, 1.0, 60.0, True, "extra"],
        (1, 1.0, 60.0, True),
        [-1, 1.0, 60.0, True],
        ["1", 1.0, 60.0, True],
        [1, "soon", 60.0, True],
        [1, None, 60.0, True],
        [1, 1.0, [60.0], True],
        [1, 1.0, 60.0, "no"],
    ],
    ids=repr,
)
def test_malformed_wire_data_is_rejected_with_plan_error(data: Any) -> None:
    with pytest.raises(PlanError):
        RetryPolicy.from_wire(data)
