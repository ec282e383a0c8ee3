"""The pure scheduling core: given a plan, its state and an event, which actions follow.

Example-based tests first, then property tests over random DAGs and random interleavings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aexec.plan import Plan, StepSpec, build
from aexec.retry import RetryPolicy
from aexec.scheduling import (
    Action,
    Dispatch,
    Fail,
    Finish,
    RecordedStep,
    Retry,
    RunState,
    Skip,
)
from aexec.types import ErrorInfo, RunStatus, StepStatus

BOOM = ErrorInfo("ValueError", "boom")
FATAL = ErrorInfo("TypeError", "fatal", retryable=False)


def make_plan(deps: dict[str, Sequence[str]], retries: dict[str, int] | None = None) -> Plan:
    """A plan with one step per key of ``deps`` (in that order)."""
    retries = retries or {}
    return build(
        "p",
        [
            StepSpec(
                key=key,
                name="noop",
                deps=tuple(ds),
                retry=RetryPolicy(retries.get(key, 0), backoff=1.0, backoff_max=8.0),
            )
            for key, ds in deps.items()
        ],
    )


class Run:
    """A RunState addressed by step keys, for readable examples."""

    def __init__(self, plan: Plan, **options: Any) -> None:
        self.plan = plan
        self.state = RunState(plan, sample=lambda: 0.5, **options)

    def i(self, key: str) -> int:
        return self.plan.index[key]

    def keys(self, indices: Sequence[int]) -> list[str]:
        return [self.plan.steps[i].key for i in indices]

    def dispatch(self, *keys: str, attempt: int = 1) -> list[Action]:
        return [Dispatch(self.i(k), attempt) for k in keys]

    def start(self) -> list[Action]:
        return self.state.start()

    def ok(self, key: str, attempt: int = 1, output: Any = None) -> list[Action] | None:
        return self.state.succeeded(self.i(key), attempt, output)

    def fail(self, key: str, attempt: int = 1, error: ErrorInfo = BOOM) -> list[Action] | None:
        return self.state.failed(self.i(key), attempt, error)

    def status(self, key: str) -> StepStatus:
        return self.state.status[self.i(key)]

    def snapshot(self) -> tuple[Any, ...]:
        s = self.state
        return (
            list(s.status),
            list(s.attempts),
            list(s.waiting),
            list(s.outputs),
            dict(s.errors),
            s.unfinished,
            s.run_status,
        )


DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


# -- start -----------------------------------------------------------------------------


def test_start_dispatches_every_root() -> None:
    run = Run(make_plan({"a": [], "b": ["a"], "c": [], "d": ["c"]}))
    assert run.start() == run.dispatch("a", "c")
    assert run.state.run_status is RunStatus.RUNNING
    assert [run.status(k) for k in "abcd"] == ["queued", "pending", "queued", "pending"]
    assert run.state.attempts == [1, 0, 1, 0]


def test_start_twice_does_nothing_the_second_time() -> None:
    run = Run(make_plan(DIAMOND))
    run.start()
    assert run.start() == []


def test_empty_plan_finishes_at_start() -> None:
    run = Run(make_plan({}))
    assert run.start() == [Finish(RunStatus.SUCCEEDED)]
    assert run.state.finished
    assert run.start() == []
    assert run.state.cancel() == []


def test_new_state_is_pending() -> None:
    run = Run(make_plan(DIAMOND))
    assert run.state.run_status is RunStatus.PENDING
    assert not run.state.finished
    assert run.state.in_flight() == []


# -- success ---------------------------------------------------------------------------


def test_success_dispatches_dependents_only_when_all_their_inputs_are_done() -> None:
    run = Run(make_plan(DIAMOND))
    run.start()
    assert run.ok("a", output=b"A") == run.dispatch("b", "c")
    assert run.ok("b") == []
    assert run.status("d") is StepStatus.PENDING
    assert run.ok("c") == run.dispatch("d")
    assert run.ok("d") == [Finish(RunStatus.SUCCEEDED)]
    assert run.state.outputs[run.i("a")] == b"A"
    assert all(s is StepStatus.SUCCEEDED for s in run.state.status)


def test_a_step_taking_one_input_twice_waits_for_it_once() -> None:
    run = Run(make_plan({"a": [], "b": ["a", "a"]}))
    run.start()
    assert run.ok("a") == run.dispatch("b")


def test_success_of_a_running_step_counts() -> None:
    run = Run(make_plan({"a": []}))
    run.start()
    assert run.state.started(0, 1) is True
    assert run.status("a") is StepStatus.RUNNING
    assert run.ok("a") == [Finish(RunStatus.SUCCEEDED)]


def test_in_flight_lists_queued_and_running_steps() -> None:
    run = Run(make_plan({"a": [], "b": [], "c": ["a"]}))
    run.start()
    run.state.started(run.i("b"), 1)
    assert run.keys(run.state.in_flight()) == ["a", "b"]


# -- started ---------------------------------------------------------------------------


def test_started_only_moves_a_queued_step_of_the_current_attempt() -> None:
    run = Run(make_plan({"a": [], "b": ["a"]}))
    run.start()
    assert run.state.started(run.i("a"), 2) is False  # wrong attempt
    assert run.state.started(run.i("b"), 1) is False  # not dispatched
    assert run.state.started(run.i("a"), 1) is True
    assert run.state.started(run.i("a"), 1) is False  # already running
    run.ok("a")
    assert run.state.started(run.i("a"), 1) is False  # finished


# -- failure and retries ---------------------------------------------------------------


def test_failure_with_retries_left_schedules_a_retry_with_backoff() -> None:
    run = Run(make_plan({"a": []}, retries={"a": 3}))
    run.start()
    assert run.fail("a", 1) == [Retry(0, 2, 0.75, BOOM)]  # d=1: 1/2 + 0.5 * 1/2
    assert run.status("a") is StepStatus.RETRYING
    assert run.state.in_flight() == []
    assert run.state.retry_due(0, 2) == [Dispatch(0, 2)]
    assert run.status("a") is StepStatus.QUEUED
    assert run.fail("a", 2) == [Retry(0, 3, 1.5, BOOM)]  # d=2
    assert run.state.retry_due(0, 3) == [Dispatch(0, 3)]
    assert run.fail("a", 3) == [Retry(0, 4, 3.0, BOOM)]  # d=4
    assert run.state.retry_due(0, 4) == [Dispatch(0, 4)]
    assert run.ok("a", 4) == [Finish(RunStatus.SUCCEEDED)]
    assert run.state.attempts == [4]


def test_retry_delays_come_from_the_step_policy_and_sample() -> None:
    plan = build("p", [StepSpec("a", "noop", retry=RetryPolicy(2, backoff=10.0, backoff_max=15.0))])
    samples = iter([0.0, 0.999])
    state = RunState(plan, sample=lambda: next(samples))
    state.start()
    assert state.failed(0, 1, BOOM) == [Retry(0, 2, 5.0, BOOM)]
    state.retry_due(0, 2)
    (retry,) = state.failed(0, 2, BOOM) or []
    assert isinstance(retry, Retry)
    assert retry.delay == 7.5 + 0.999 * 7.5  # d = min(15, 20)


def test_failure_after_the_last_retry_fails_the_step() -> None:
    run = Run(make_plan({"a": []}, retries={"a": 1}))
    run.start()
    run.fail("a", 1)
    run.state.retry_due(0, 2)
    assert run.fail("a", 2) == [Fail(0, 2, BOOM), Finish(RunStatus.FAILED)]
    assert run.state.errors == {0: BOOM}


def test_retries_count_failures_not_attempts_lost_to_workers() -> None:
    run = Run(make_plan({"a": []}, retries={"a": 1}))
    run.start()
    assert run.state.lost_worker(0, 1) == [Dispatch(0, 2)]
    assert run.fail("a", 2) == [Retry(0, 3, 0.75, BOOM)]  # the first failure: backoff of one
    run.state.retry_due(0, 3)
    assert run.fail("a", 3) == [Fail(0, 3, BOOM), Finish(RunStatus.FAILED)]
    assert run.state.failures == [2]


def test_an_unconfirmed_dispatch_goes_again_as_the_next_attempt_spending_nothing() -> None:
    run = Run(make_plan({"a": [], "b": ["a"]}, retries={"a": 1}))
    run.start()
    assert run.state.unconfirmed(0, 1) == [Dispatch(0, 2)]
    assert run.state.unconfirmed(0, 1) is None  # superseded
    assert run.ok("a", 1) is None  # the first attempt's completion is stale now
    assert run.state.started(0, 2)
    assert run.state.unconfirmed(0, 2) is None  # it was seen running: it did arrive
    assert run.fail("a", 2) == [Retry(0, 3, 0.75, BOOM)]  # its retry is intact
    assert run.state.lost == {}


def test_a_restored_step_keeps_the_retries_its_failures_left() -> None:
    plan = make_plan({"a": [], "b": []}, retries={"a": 1, "b": 1})
    state = RunState(plan, sample=lambda: 0.5)
    recorded = [
        RecordedStep(StepStatus.QUEUED, 3, failures=0),  # dispatched 3 times, never failed
        RecordedStep(StepStatus.RETRYING, 2, error=BOOM, failures=1),
    ]
    assert state.restore(recorded, started=True) == [Dispatch(0, 4), Dispatch(1, 3)]
    assert state.failed(0, 4, BOOM) == [Retry(0, 5, 0.75, BOOM)]
    assert state.failed(1, 3, BOOM) == [Fail(1, 3, BOOM)]  # its one retry was spent before
    assert state.failures == [1, 2]


def test_halt_ends_the_run_outside_the_schedule() -> None:
    run = Run(make_plan({"a": []}))
    run.start()
    run.state.halt(RunStatus.FAILED)
    assert run.state.finished and run.state.run_status is RunStatus.FAILED
    assert run.state.cancel() == []


def test_non_retryable_error_fails_at_once() -> None:
    run = Run(make_plan({"a": []}, retries={"a": 5}))
    run.start()
    assert run.fail("a", error=FATAL) == [Fail(0, 1, FATAL), Finish(RunStatus.FAILED)]
    assert run.status("a") is StepStatus.FAILED


def test_retry_due_for_the_wrong_attempt_or_state_does_nothing() -> None:
    run = Run(make_plan({"a": []}, retries={"a": 2}))
    run.start()
    assert run.state.retry_due(0, 1) == []  # not retrying
    run.fail("a", 1)
    assert run.state.retry_due(0, 3) == []  # wrong attempt
    assert run.state.retry_due(0, 2) == [Dispatch(0, 2)]
    assert run.state.retry_due(0, 2) == []  # already dispatched


def test_completion_of_a_retrying_step_before_its_retry_is_ignored() -> None:
    run = Run(make_plan({"a": []}, retries={"a": 2}))
    run.start()
    run.fail("a", 1)
    before = run.snapshot()
    assert run.ok("a", 2) is None
    assert run.ok("a", 1) is None
    assert run.fail("a", 1) is None
    assert run.snapshot() == before


# -- failure skips dependents ----------------------------------------------------------


def test_failure_skips_exactly_the_transitive_dependents() -> None:
    plan = make_plan(
        {
            "root": [],
            "bad": ["root"],
            "child": ["bad"],
            "grandchild": ["child", "side"],
            "side": ["root"],
            "side_child": ["side"],
            "other": [],
        }
    )
    run = Run(plan)
    run.start()
    assert run.ok("root") == run.dispatch("bad", "side")
    actions = run.fail("bad")
    assert actions is not None
    assert actions[0] == Fail(run.i("bad"), 1, BOOM)
    (skip,) = actions[1:]
    assert isinstance(skip, Skip)
    assert skip.status is StepStatus.SKIPPED
    assert sorted(run.keys(skip.indices)) == ["child", "grandchild"]
    # Independent branches keep going.
    assert run.ok("side") == run.dispatch("side_child")
    assert run.ok("side_child") == []
    assert run.ok("other") == [Finish(RunStatus.FAILED)]
    assert [run.status(k) for k in ("child", "grandchild")] == ["skipped", "skipped"]
    assert run.status("side_child") is StepStatus.SUCCEEDED


def test_a_step_already_skipped_is_not_skipped_again() -> None:
    run = Run(make_plan({"a": [], "b": [], "c": ["a", "b"]}))
    run.start()
    assert run.fail("a") == [Fail(0, 1, BOOM), Skip((2,))]
    assert run.fail("b") == [Fail(1, 1, BOOM), Finish(RunStatus.FAILED)]


def test_failure_of_a_leaf_skips_nothing() -> None:
    run = Run(make_plan({"a": [], "b": []}))
    run.start()
    assert run.fail("a") == [Fail(0, 1, BOOM)]
    assert run.ok("b") == [Finish(RunStatus.FAILED)]


def test_success_after_a_sibling_failed_does_not_dispatch_the_skipped_join() -> None:
    run = Run(make_plan(DIAMOND))
    run.start()
    run.ok("a")
    run.fail("b")
    assert run.status("d") is StepStatus.SKIPPED
    assert run.ok("c") == [Finish(RunStatus.FAILED)]


# -- duplicates and stale events -------------------------------------------------------


def test_duplicate_success_returns_none_and_changes_nothing() -> None:
    run = Run(make_plan(DIAMOND))
    run.start()
    run.ok("a", output="first")
    before = run.snapshot()
    assert run.ok("a", output="second") is None
    assert run.fail("a") is None
    assert run.snapshot() == before
    assert run.state.outputs[0] == "first"


def test_duplicate_failure_returns_none_and_changes_nothing() -> None:
    run = Run(make_plan(DIAMOND))
    run.start()
    run.fail("a")
    before = run.snapshot()
    assert run.fail("a") is None
    assert run.ok("a") is None
    assert run.snapshot() == before


def test_completion_of_a_superseded_attempt_returns_none() -> None:
    run = Run(make_plan({"a": []}, retries={"a": 1}))
    run.start()
    run.fail("a", 1)
    run.state.retry_due(0, 2)
    before = run.snapshot()
    assert run.ok("a", 1) is None
    assert run.fail("a", 1) is None
    assert run.snapshot() == before
    assert run.ok("a", 2) == [Finish(RunStatus.SUCCEEDED)]


def test_completion_of_a_step_never_dispatched_returns_none() -> None:
    run = Run(make_plan(DIAMOND))
    run.start()
    before = run.snapshot()
    assert run.ok("d") is None
    assert run.fail("d") is None
    assert run.snapshot() == before


def test_completions_after_the_finish_return_none() -> None:
    run = Run(make_plan({"a": []}))
    run.start()
    run.ok("a")
    assert run.ok("a") is None
    assert run.fail("a") is None
    assert run.state.cancel() == []


# -- finishing and cancelling ----------------------------------------------------------


def test_run_finishes_exactly_once() -> None:
    run = Run(make_plan({"a": [], "b": []}))
    actions = run.start()
    actions += run.ok("a") or []
    actions += run.fail("b") or []
    actions += run.ok("b") or []
    actions += run.state.cancel()
    assert [a for a in actions if isinstance(a, Finish)] == [Finish(RunStatus.FAILED)]


def test_cancel_cancels_every_unfinished_step_and_finishes() -> None:
    run = Run(make_plan({"a": [], "b": ["a"], "c": [], "r": []}, retries={"r": 2}))
    run.start()
    run.ok("a")
    run.fail("r")
    assert run.state.cancel() == [
        Skip((run.i("b"), run.i("c"), run.i("r")), StepStatus.CANCELLED),
        Finish(RunStatus.CANCELLED),
    ]
    assert [run.status(k) for k in "abcr"] == ["succeeded", "cancelled", "cancelled", "cancelled"]
    assert run.state.run_status is RunStatus.CANCELLED
    assert run.state.finished
    assert run.state.in_flight() == []


def test_cancel_is_final() -> None:
    run = Run(make_plan({"a": [], "b": ["a"]}, retries={"a": 1}))
    run.start()
    run.state.cancel()
    before = run.snapshot()
    assert run.state.cancel() == []
    assert run.ok("a") is None
    assert run.fail("a") is None
    assert run.state.retry_due(0, 2) == []
    assert run.state.started(0, 1) is False
    assert run.snapshot() == before


def test_cancel_before_start() -> None:
    run = Run(make_plan({"a": []}))
    assert run.state.cancel() == [Skip((0,), StepStatus.CANCELLED), Finish(RunStatus.CANCELLED)]
    assert run.start() == []


# -- fail fast -------------------------------------------------------------------------


def test_fail_fast_skips_everything_waiting_but_lets_in_flight_steps_finish() -> None:
    run = Run(
        make_plan({"a": [], "b": [], "c": [], "after_c": ["c"], "r": []}, retries={"r": 1}),
        fail_fast=True,
    )
    run.start()
    run.fail("r")  # retrying: waiting for its backoff
    actions = run.fail("a")
    assert actions == [
        Fail(run.i("a"), 1, BOOM),
        Skip((run.i("after_c"), run.i("r"))),
    ]
    assert run.state.retry_due(run.i("r"), 2) == []
    assert run.ok("c") == []  # its dependent was skipped already
    assert run.ok("b") == [Finish(RunStatus.FAILED)]


def test_fail_fast_does_not_retry_steps_failing_after_the_run_failed() -> None:
    run = Run(make_plan({"a": [], "b": []}, retries={"b": 3}), fail_fast=True)
    run.start()
    run.fail("a")
    assert run.fail("b") == [Fail(run.i("b"), 1, BOOM), Finish(RunStatus.FAILED)]


def test_without_fail_fast_independent_steps_still_retry() -> None:
    run = Run(make_plan({"a": [], "b": []}, retries={"b": 3}))
    run.start()
    run.fail("a")
    assert run.fail("b") == [Retry(run.i("b"), 2, 0.75, BOOM)]


# -- property tests --------------------------------------------------------------------


@dataclasses.dataclass
class Scenario:
    deps: list[list[int]]
    retries: list[int]
    failures: list[int]  # how many attempts of each step fail before one succeeds
    fatal: list[bool]  # failures of this step are not retryable
    fail_fast: bool

    def plan(self) -> Plan:
        return build(
            "random",
            [
                StepSpec(
                    key=f"s{i}",
                    name="noop",
                    deps=tuple(f"s{d}" for d in ds),
                    retry=RetryPolicy(self.retries[i], backoff=0.5, backoff_max=4.0),
                )
                for i, ds in enumerate(self.deps)
            ],
        )

    def descendants(self, index: int) -> set[int]:
        """Transitive dependents of ``index``, computed from the raw deps lists."""
        found: set[int] = set()
        changed = True
        while changed:
            changed = False
            for i, ds in enumerate(self.deps):
                if i not in found and any(d == index or d in found for d in ds):
                    found.add(i)
                    changed = True
        return found

    def fails_for_good(self, index: int) -> bool:
        if self.failures[index] == 0:
            return False
        return self.fatal[index] or self.failures[index] > self.retries[index]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(0, 12))
    deps = [draw(st.lists(st.integers(0, i - 1), max_size=3)) if i else [] for i in range(n)]
    return Scenario(
        deps=deps,
        retries=draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)),
        failures=draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)),
        fatal=draw(st.lists(st.booleans(), min_size=n, max_size=n)),
        fail_fast=draw(st.booleans()),
    )


@dataclasses.dataclass
class Trace:
    dispatched: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    finishes: list[Finish] = dataclasses.field(default_factory=list)
    failed: list[int] = dataclasses.field(default_factory=list)
    skips: list[tuple[int, set[int]]] = dataclasses.field(default_factory=list)  # (cause, steps)
    events_after_finish: int = 0


def snapshot(state: RunState) -> tuple[Any, ...]:
    return (
        list(state.status),
        list(state.attempts),
        list(state.waiting),
        list(state.outputs),
        dict(state.errors),
        state.unfinished,
        state.run_status,
    )


def drive(
    scenario: Scenario, data: st.DataObject, *, may_cancel: bool = False
) -> tuple[RunState, Trace]:
    """Run a random interleaving of completions, retries and duplicates, checking as we go."""
    plan = scenario.plan()
    n = len(plan)
    state = RunState(plan, fail_fast=scenario.fail_fast, sample=lambda: 0.25)
    trace = Trace()
    in_flight: set[tuple[int, int]] = set()
    retries_due: set[tuple[int, int]] = set()
    past: list[tuple[str, int, int]] = []  # completions already delivered, for duplicates
    succeeded: set[int] = set()

    def apply(actions: list[Action], cause: int | None) -> None:
        for action in actions:
            assert not trace.finishes, f"action {action} after the run finished"
            if isinstance(action, Dispatch):
                key = (action.index, action.attempt)
                assert key not in trace.dispatched, f"dispatched twice: {key}"
                if action.attempt == 1:
                    deps = plan.steps[action.index].deps
                    assert all(d in succeeded for d in deps), f"{key} dispatched before inputs"
                else:
                    assert (action.index, action.attempt - 1) in trace.dispatched
                trace.dispatched.append(key)
                in_flight.add(key)
            elif isinstance(action, Retry):
                policy = plan.steps[action.index].retry
                assert action.attempt >= 2
                assert action.delay == policy.delay(action.attempt - 1, 0.25)
                assert not (scenario.fail_fast and trace.failed), "retry after fail-fast"
                retries_due.add((action.index, action.attempt))
            elif isinstance(action, Fail):
                assert action.index == cause
                trace.failed.append(action.index)
            elif isinstance(action, Skip):
                if action.status is StepStatus.SKIPPED:
                    assert cause is not None
                    trace.skips.append((cause, set(action.indices)))
            else:
                trace.finishes.append(action)

    apply(state.start(), None)
    if n == 0:
        assert trace.finishes == [Finish(RunStatus.SUCCEEDED)]
    while in_flight or retries_due:
        options: list[tuple[str, Any]] = [("complete", k) for k in sorted(in_flight)]
        options += [("retry", k) for k in sorted(retries_due)]
        if past:
            options.append(("duplicate", None))
        if may_cancel:
            options.append(("cancel", None))
        kind, arg = data.draw(st.sampled_from(options))
        if kind == "complete":
            index, attempt = arg
            in_flight.discard(arg)
            if attempt > scenario.failures[index]:
                actions = state.succeeded(index, attempt, f"out{index}")
                past.append(("ok", index, attempt))
                if actions is not None:
                    succeeded.add(index)
            else:
                error = FATAL if scenario.fatal[index] else BOOM
                actions = state.failed(index, attempt, error)
                past.append(("fail", index, attempt))
            if actions is None:
                # Only a step skipped by fail-fast or a cancel may have its completion refused.
                assert state.status[index] in (StepStatus.SKIPPED, StepStatus.CANCELLED)
                trace.events_after_finish += 1
            else:
                apply(actions, index)
        elif kind == "retry":
            retries_due.discard(arg)
            apply(state.retry_due(*arg), arg[0])
        elif kind == "duplicate":
            what, index, attempt = data.draw(st.sampled_from(past))
            other = "fail" if what == "ok" else "ok"
            what = data.draw(st.sampled_from([what, other]))
            before = snapshot(state)
            if what == "ok":
                assert state.succeeded(index, attempt, "dup") is None
            else:
                assert state.failed(index, attempt, BOOM) is None
            assert state.started(index, attempt) is False
            assert snapshot(state) == before
        else:
            was_finished = state.finished
            unfinished = tuple(i for i, s in enumerate(state.status) if not s.finished)
            actions = state.cancel()
            expected: list[Action] = [] if was_finished else [Finish(RunStatus.CANCELLED)]
            if unfinished:
                expected.insert(0, Skip(unfinished, StepStatus.CANCELLED))
            assert actions == expected
            apply(actions, None)
            in_flight.clear()
            retries_due.clear()
    return state, trace


def check_common(scenario: Scenario, state: RunState, trace: Trace) -> None:
    # Every step ends in a final state and the run finished exactly once.
    assert all(s.finished for s in state.status)
    assert state.unfinished == 0
    assert len(trace.finishes) == 1
    assert trace.finishes[0].status is state.run_status
    # Each attempt is dispatched once, attempts are consecutive from 1.
    for i in range(len(state.status)):
        attempts = sorted(a for j, a in trace.dispatched if j == i)
        assert attempts == list(range(1, len(attempts) + 1))
        assert len(attempts) <= scenario.retries[i] + 1
    # Failed steps are exactly those with errors; a skipped step never ran.
    assert sorted(trace.failed) == sorted(state.errors)
    for i, s in enumerate(state.status):
        if s is StepStatus.FAILED:
            assert i in state.errors
        if s is StepStatus.SKIPPED and not scenario.fail_fast:
            assert all(j != i for j, _ in trace.dispatched)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), data=st.data())
def test_random_runs_follow_the_schedule(scenario: Scenario, data: st.DataObject) -> None:
    state, trace = drive(scenario, data)
    check_common(scenario, state, trace)
    failed = {i for i, s in enumerate(state.status) if s is StepStatus.FAILED}
    assert (state.run_status is RunStatus.FAILED) == bool(failed)
    if state.run_status is not RunStatus.FAILED:
        assert state.run_status is RunStatus.SUCCEEDED
    if scenario.fail_fast:
        # Nothing new starts once a step has failed for good.
        if trace.failed:
            first_fail = trace.failed[0]
            assert state.status[first_fail] is StepStatus.FAILED
        return
    # Without fail-fast the outcome is fully determined by the scenario.
    skipped = {i for i, s in enumerate(state.status) if s is StepStatus.SKIPPED}
    expected_skipped = set().union(*(scenario.descendants(i) for i in failed))
    assert skipped == expected_skipped
    assert not failed & expected_skipped
    for cause, steps in trace.skips:
        assert steps <= scenario.descendants(cause)
    for i in range(len(state.status)):
        if i in skipped:
            continue
        assert (i in failed) == scenario.fails_for_good(i)
        attempts = state.attempts[i]
        if i in failed:
            assert attempts == (1 if scenario.fatal[i] else scenario.retries[i] + 1)
        else:
            assert attempts == scenario.failures[i] + 1
            assert state.outputs[i] == f"out{i}"
    assert trace.events_after_finish == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), data=st.data())
def test_random_runs_with_cancellation_still_finish_once(
    scenario: Scenario, data: st.DataObject
) -> None:
    state, trace = drive(scenario, data, may_cancel=True)
    check_common(scenario, state, trace)
    if state.run_status is not RunStatus.CANCELLED:
        failed = any(s is StepStatus.FAILED for s in state.status)
        assert state.run_status is (RunStatus.FAILED if failed else RunStatus.SUCCEEDED)
