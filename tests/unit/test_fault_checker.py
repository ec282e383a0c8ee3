"""The fault campaign's checker (benchmarks/faults/checker.py) finds every kind of violation
in hand-made observations, and nothing in a consistent history."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from benchmarks.faults.checker import KINDS, check
from benchmarks.faults.ledger import Execution
from benchmarks.faults.model import (
    Cancel,
    DeadLetter,
    EventView,
    Expected,
    Observations,
    Poison,
    ProcessFate,
    RunView,
    StepView,
    Submission,
)


def events(*specs: tuple[float, str, str | None, int]) -> list[EventView]:
    data = {"coordinator": "c1", "worker": "w1"}
    return [
        EventView(seq, ts, kind, step, attempt, data)
        for seq, (ts, kind, step, attempt) in enumerate(specs, 1)
    ]


def steps(**statuses: tuple[str, int]) -> dict[str, StepView]:
    return {key: StepView(key, status, attempts) for key, (status, attempts) in statuses.items()}


def run(exe: str, step: str, attempt: int, started: float, worker: str = "w1") -> Execution:
    pid = {"w1": 11, "w2": 12, "w3": 13}[worker]
    return Execution(exe, step, attempt, worker, pid, started)


def consistent() -> Observations:
    """Three runs that went right: a chain that succeeded, a run whose doomed step failed
    after a retry, and a run cancelled while its gate step ran."""
    chain = RunView(
        "r-chain",
        "chain",
        "succeeded",
        finished_at=110.0,
        steps=steps(origin=("succeeded", 1), add0=("succeeded", 1), add1=("succeeded", 1)),
        events=events(
            (100.0, "run_started", None, 0),
            (100.0, "step_dispatched", "origin", 1),
            (100.2, "step_succeeded", "origin", 1),
            (100.2, "step_dispatched", "add0", 1),
            (100.4, "step_succeeded", "add0", 1),
            (100.4, "step_dispatched", "add1", 1),
            (110.0, "step_succeeded", "add1", 1),
            (110.0, "run_succeeded", None, 0),
        ),
        deps={"origin": (), "add0": ("origin",), "add1": ("add0",)},
        result=3,
    )
    failing = RunView(
        "r-fail",
        "failing",
        "failed",
        finished_at=103.0,
        steps=steps(
            origin=("succeeded", 1),
            doomed=("failed", 2),
            after=("skipped", 0),
            good=("succeeded", 1),
            total=("skipped", 0),
        ),
        events=events(
            (100.0, "run_started", None, 0),
            (100.0, "step_dispatched", "origin", 1),
            (100.1, "step_succeeded", "origin", 1),
            (100.1, "step_dispatched", "doomed", 1),
            (100.1, "step_dispatched", "good", 1),
            (100.2, "step_retrying", "doomed", 1),
            (100.3, "step_succeeded", "good", 1),
            (100.5, "step_dispatched", "doomed", 2),
            (103.0, "step_failed", "doomed", 2),
            (103.0, "step_skipped", "after", 0),
            (103.0, "step_skipped", "total", 0),
            (103.0, "run_failed", None, 0),
        ),
        deps={
            "origin": (),
            "doomed": ("origin",),
            "after": ("doomed",),
            "good": ("origin",),
            "total": ("after", "good"),
        },
    )
    cancelled = RunView(
        "r-cancel",
        "gated",
        "cancelled",
        finished_at=120.0,
        steps=steps(origin=("succeeded", 1), gate=("cancelled", 1), add0=("cancelled", 0)),
        events=events(
            (100.0, "run_started", None, 0),
            (100.0, "step_dispatched", "origin", 1),
            (100.1, "step_succeeded", "origin", 1),
            (100.1, "step_dispatched", "gate", 1),
            (120.0, "step_cancelled", "gate", 1),
            (120.0, "step_cancelled", "add0", 0),
            (120.0, "run_cancelled", None, 0),
        ),
        deps={"origin": (), "gate": ("origin",), "add0": ("gate",)},
    )
    return Observations(
        runs={r.run_id: r for r in (chain, failing, cancelled)},
        expected={
            "r-chain": Expected("succeeded", result=3),
            "r-fail": Expected("failed", frozenset({"doomed"})),
            "r-cancel": Expected("succeeded", result=7),
        },
        submissions=[
            Submission("r-chain", "chain", 1, 99.0),
            Submission("r-fail", "failing", 2, 99.0),
            Submission("r-cancel", "gated", 3, 99.0),
        ],
        cancels={"r-cancel": Cancel("r-cancel", 119.9)},
        executions=[
            run("r-chain", "origin", 1, 100.1),
            run("r-chain", "add0", 1, 100.3, "w2"),
            run("r-chain", "add1", 1, 100.5),
            run("r-fail", "origin", 1, 100.05),
            run("r-fail", "doomed", 1, 100.15),
            run("r-fail", "good", 1, 100.15, "w2"),
            run("r-fail", "doomed", 2, 100.6, "w3"),
            run("r-cancel", "origin", 1, 100.05),
            run("r-cancel", "gate", 1, 100.2, "w2"),
        ],
        processes=[
            ProcessFate("w1", 11, "stopped", 90.0, 130.0, 131.0, 0),
            ProcessFate("w2", 12, "killed", 90.0, 105.0, 105.0, -9),
            ProcessFate("w3", 13, "stopped", 90.0, 130.0, 131.0, 0),
        ],
        poison=[Poison("p1", "aexec.step.faults", "malformed", "garbage", 101.0)],
        dead_letters=[DeadLetter("p1", "aexec.step.faults", "rejected", "undecodable")],
    )


def kinds_found(obs: Observations) -> set[str]:
    return {v.kind for v in check(obs)}


def test_a_consistent_history_has_no_violation() -> None:
    assert check(consistent()) == []


def replace_run(obs: Observations, run_id: str, **changes: object) -> None:
    obs.runs[run_id] = dataclasses.replace(obs.runs[run_id], **changes)  # type: ignore[arg-type]


def add_events(obs: Observations, run_id: str, *specs: tuple[float, str, str | None, int]) -> None:
    run = obs.runs[run_id]
    start = len(run.events) + 1
    added = [
        EventView(seq, ts, kind, step, attempt, {"worker": "w2"})
        for seq, (ts, kind, step, attempt) in enumerate(specs, start)
    ]
    run.events = sorted([*run.events, *added], key=lambda e: (e.ts, e.seq))


def unfinished(obs: Observations) -> None:
    replace_run(
        obs,
        "r-chain",
        status="running",
        finished_at=None,
        steps={**obs.runs["r-chain"].steps, "add1": StepView("add1", "queued", 1)},
    )


def lost_submission(obs: Observations) -> None:
    obs.submissions.append(Submission("r-gone", "chain", 9, 100.0))


def outcome_twice(obs: Observations) -> None:
    add_events(obs, "r-fail", (100.25, "step_retrying", "doomed", 1))


def success_twice(obs: Observations) -> None:
    add_events(
        obs,
        "r-chain",
        (100.5, "step_dispatched", "add0", 2),
        (100.6, "step_succeeded", "add0", 2),
    )


def dispatch_twice(obs: Observations) -> None:
    add_events(obs, "r-chain", (100.45, "step_dispatched", "add1", 1))


def attempt_ran_twice(obs: Observations) -> None:
    obs.executions.append(run("r-chain", "add0", 1, 100.35, "w3"))


def step_ran_again(obs: Observations) -> None:
    obs.executions.append(run("r-chain", "add0", 2, 100.35, "w3"))


def ran_after_end(obs: Observations) -> None:
    obs.executions[2] = run("r-chain", "add1", 1, 115.0)


def ran_though_cancelled(obs: Observations) -> None:
    obs.executions.append(run("r-cancel", "add0", 1, 119.95))


def cancel_ignored(obs: Observations) -> None:
    obs.cancels["r-chain"] = Cancel("r-chain", 105.0)


def wrong_outcome(obs: Observations) -> None:
    replace_run(
        obs, "r-fail", steps={**obs.runs["r-fail"].steps, "after": StepView("after", "succeeded")}
    )


def cancelled_by_nobody(obs: Observations) -> None:
    del obs.cancels["r-cancel"]


def wrong_result(obs: Observations) -> None:
    replace_run(obs, "r-chain", result=4)


def process_crashed(obs: Observations) -> None:
    obs.processes.append(ProcessFate("c1", 21, "crashed", 90.0, None, 104.0, 1))


def unclean_exit(obs: Observations) -> None:
    obs.processes[0] = ProcessFate("w1", 11, "stopped", 90.0, 130.0, 150.0, -9, overran=True)


def drain_never_finished(obs: Observations) -> None:
    obs.processes.append(ProcessFate("w2", 14, "replaced", 90.0, 106.0, 150.0, -9, overran=True))


def innocent_dead_letter(obs: Observations) -> None:
    obs.dead_letters.append(DeadLetter("d2", "aexec.reply.c1", "rejected", "done r-chain add0 1"))


def poison_not_dead_lettered(obs: Observations) -> None:
    obs.dead_letters.clear()


VIOLATIONS: dict[Callable[[Observations], None], str] = {
    unfinished: "unfinished",
    lost_submission: "lost-submission",
    outcome_twice: "outcome-twice",
    success_twice: "success-twice",
    dispatch_twice: "dispatch-twice",
    attempt_ran_twice: "attempt-ran-twice",
    step_ran_again: "step-ran-again",
    ran_after_end: "ran-after-end",
    ran_though_cancelled: "ran-though-cancelled",
    cancel_ignored: "cancel-ignored",
    wrong_outcome: "wrong-outcome",
    cancelled_by_nobody: "wrong-outcome",
    wrong_result: "wrong-result",
    process_crashed: "process-crashed",
    unclean_exit: "unclean-exit",
    drain_never_finished: "unclean-exit",
    innocent_dead_letter: "innocent-dead-letter",
    poison_not_dead_lettered: "poison-not-dead-lettered",
}


@pytest.mark.parametrize(
    ("spoil", "kind"), VIOLATIONS.items(), ids=[f.__name__ for f in VIOLATIONS]
)
def test_each_kind_of_violation_is_reported(
    spoil: Callable[[Observations], None], kind: str
) -> None:
    obs = consistent()
    spoil(obs)
    found = check(obs)
    assert {v.kind for v in found} == {kind}, [v.line() for v in found]
    assert all(v.subject and v.detail for v in found)


def test_every_kind_the_checker_knows_has_a_test() -> None:
    assert set(VIOLATIONS.values()) == set(KINDS)


def test_a_success_recorded_twice_for_one_attempt_is_also_two_outcomes() -> None:
    obs = consistent()
    add_events(obs, "r-chain", (100.45, "step_succeeded", "add0", 1))
    assert kinds_found(obs) == {"outcome-twice", "success-twice"}


def test_attempts_the_campaign_duplicated_on_the_wire_may_run_twice() -> None:
    obs = consistent()
    obs.executions.append(run("r-chain", "add0", 1, 100.35, "w3"))
    obs.executions.append(run("r-chain", "add1", 1, 112.0, "w3"))
    obs.duplicated = frozenset({("r-chain", "add0", 1), ("r-chain", "add1", 1)})
    assert check(obs) == []


def test_a_step_retried_after_a_failure_may_run_again() -> None:
    obs = consistent()
    assert {(e.step, e.attempt) for e in obs.executions if e.run_id == "r-fail"} >= {
        ("doomed", 1),
        ("doomed", 2),
    }
    obs.runs["r-fail"].events = [e for e in obs.runs["r-fail"].events if e.kind != "step_retrying"]
    assert kinds_found(obs) == {"step-ran-again"}


def test_a_run_that_ended_before_its_cancel_arrived_keeps_its_natural_outcome() -> None:
    obs = consistent()
    obs.cancels["r-chain"] = Cancel("r-chain", 109.5)  # within the slack of its end
    assert check(obs) == []
    obs.cancels["r-chain"] = Cancel("r-chain", 105.0, sent=False)  # the request raised
    assert check(obs) == []


def test_a_start_within_the_slack_of_the_end_is_not_after_the_end() -> None:
    obs = consistent()
    obs.executions[2] = run("r-chain", "add1", 1, 110.0 + obs.slack * 0.9)
    assert check(obs) == []


def test_poison_left_where_nobody_consumes_or_accepted_as_a_finished_run_is_fine() -> None:
    obs = consistent()
    obs.dead_letters.clear()
    obs.poison = [
        Poison("p1", "aexec.reply.gone", "malformed", "garbage", 101.0, consumed=False),
        Poison("p2", "aexec.coordinator.submit", "poison-run", "absurd-id", 101.0, True, "r-chain"),
    ]
    assert check(obs) == []


def test_violations_come_sorted_by_kind_and_print_on_one_line() -> None:
    obs = consistent()
    poison_not_dead_lettered(obs)
    unfinished(obs)
    found = check(obs)
    assert [v.kind for v in found] == ["unfinished", "poison-not-dead-lettered"]
    assert all("\n" not in v.line() and v.line().startswith("VIOLATION ") for v in found)
