"""Run admission, pure: caps, tag limits, priority order with aging."""

from __future__ import annotations

import pytest

from aexec.admission import Admission, AdmissionPolicy, Candidate, queue_order
from aexec.errors import ConfigError


def run(run_id: str, priority: int = 0, at: float = 0.0, **tags: str) -> Candidate:
    return Candidate(run_id, priority, at, tags)


def test_without_limits_nothing_is_limited() -> None:
    assert not AdmissionPolicy().limited
    assert AdmissionPolicy(max_concurrent_runs=1).limited
    assert AdmissionPolicy(run_limits={"tenant": 1}).limited


@pytest.mark.parametrize(
    "policy",
    [
        {"max_concurrent_runs": 0},
        {"max_concurrent_runs": True},
        {"run_limits": {"tenant": 0}},
        {"run_limits": {"": 1}},
        {"aging": 0.0},
    ],
)
def test_bad_policies_are_config_errors(policy: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        AdmissionPolicy(**policy)  # type: ignore[arg-type]


def test_max_concurrent_runs_queues_the_rest_and_admits_one_per_finished_run() -> None:
    admission = Admission(AdmissionPolicy(max_concurrent_runs=2))
    assert admission.offer(run("a", at=1), now=10)
    assert admission.offer(run("b", at=2), now=10)
    assert not admission.offer(run("c", at=3), now=10)
    assert not admission.offer(run("d", at=4), now=10)
    assert admission.queue(now=10) == ["c", "d"]
    assert admission.position("d", now=10) == 2
    assert admission.position("a", now=10) is None
    assert admission.finished("a", now=11) == ["c"]
    assert admission.finished("unknown", now=11) == []
    assert admission.finished("d", now=11) == []  # cancelled while queued: just dropped
    assert admission.finished("b", now=12) == []
    assert admission.running == 1 and len(admission) == 0


def test_runs_are_admitted_by_priority_then_submission_time() -> None:
    admission = Admission(AdmissionPolicy(max_concurrent_runs=1))
    assert admission.offer(run("first"), now=0)
    for name, priority, at in [("low", 0, 1), ("high", 9, 2), ("high2", 9, 3), ("mid", 5, 4)]:
        assert not admission.offer(run(name, priority, at), now=5)
    admitted = []
    last = "first"
    for _ in range(4):
        (last,) = admission.finished(last, now=5)
        admitted.append(last)
    assert admitted == ["high", "high2", "mid", "low"]


def test_a_waiting_run_ages_past_a_stream_of_higher_priority_ones() -> None:
    policy = AdmissionPolicy(max_concurrent_runs=1, aging=10.0)
    admission = Admission(policy)
    admission.offer(run("busy", at=0), now=0)
    admission.offer(run("low", 0, at=0), now=0)
    # A priority-5 run arrives every second; "low" gains a level every 10 s.
    admitted: list[str] = []
    running = "busy"
    for t in range(1, 200):
        admission.offer(run(f"high{t}", 5, at=t), now=t)
        (running,) = admission.finished(running, now=t)
        admitted.append(running)
        if running == "low":
            break
    assert "low" in admitted
    assert len(admitted) <= 60  # bounded: after about 5 levels of aging


def test_a_tag_value_limit_caps_runs_with_that_value_only() -> None:
    admission = Admission(AdmissionPolicy(run_limits={"tenant=acme": 1}))
    assert admission.offer(run("a1", tenant="acme"), now=0)
    assert not admission.offer(run("a2", tenant="acme"), now=0)
    assert admission.offer(run("b1", tenant="bolt"), now=0)  # not blocked behind a2
    assert admission.offer(run("untagged"), now=0)
    assert admission.finished("a1", now=1) == ["a2"]


def test_a_tag_limit_caps_each_value_of_the_tag() -> None:
    admission = Admission(AdmissionPolicy(max_concurrent_runs=10, run_limits={"tenant": 2}))
    assert [admission.offer(run(f"a{i}", at=i, tenant="a"), now=0) for i in range(3)] == [
        True,
        True,
        False,
    ]
    assert admission.offer(run("b0", at=5, tenant="b"), now=0)
    assert admission.finished("b0", now=1) == []
    assert admission.finished("a0", now=1) == ["a2"]


def test_a_run_taken_over_counts_even_over_the_cap() -> None:
    admission = Admission(AdmissionPolicy(max_concurrent_runs=1))
    admission.occupy(run("x"))
    admission.occupy(run("y"))
    assert not admission.offer(run("z"), now=0)
    assert admission.finished("x", now=0) == []
    assert admission.finished("y", now=0) == ["z"]


def test_queue_order_is_the_admission_order() -> None:
    runs = [run("old-low", 0, at=0), run("new-high", 3, at=100), run("old-high", 3, at=50)]
    assert queue_order(runs, now=100, aging=1000.0) == ["old-high", "new-high", "old-low"]
    # At 60 s a level, a run submitted 200 s earlier goes before one 3 levels higher.
    later = [run("old-low", 0, at=0), run("new-high", 3, at=200)]
    assert queue_order(later, now=300) == ["old-low", "new-high"]
