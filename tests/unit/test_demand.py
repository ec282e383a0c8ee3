"""Predicted demand: the DAG frontier of in-flight runs, per queue, weighted by observed
step durations (pure: no event loop)."""

from __future__ import annotations

import pytest

from aexec.demand import DEFAULT_DURATION, Durations, QueueDemand, demand
from aexec.plan import Plan, PlanStep, StepSpec, build
from aexec.scheduling import RunState

OK = b"\xc0"  # msgpack nil: an output


def chain_plan() -> Plan:
    """fetch (queue io) → three renders (queue gpu) → merge (queue io) → publish (queue io)."""
    return build(
        "room",
        [
            StepSpec(key="fetch", name="fetch", queue="io"),
            *(StepSpec(key=f"r{i}", name="render", queue="gpu", deps=("fetch",)) for i in range(3)),
            StepSpec(key="merge", name="merge", queue="io", deps=("r0", "r1", "r2")),
            StepSpec(key="publish", name="publish", queue="io", deps=("merge",)),
        ],
    )


def unit(pipeline: str, step: PlanStep) -> float:
    return 1.0


def test_a_running_step_makes_its_dependents_upcoming_on_their_own_queue() -> None:
    plan = chain_plan()
    state = RunState(plan)
    state.start()  # fetch queued
    assert demand([(plan, state.status)], unit) == {
        "io": QueueDemand(queued=1, seconds=1.0),
        "gpu": QueueDemand(upcoming=3, seconds=3.0),  # no gpu message exists yet
    }
    state.started(0, 1)
    found = demand([(plan, state.status)], unit)
    assert found["io"] == QueueDemand(running=1, seconds=1.0)
    assert found["gpu"].upcoming == 3


def test_steps_further_down_the_dag_are_not_counted_until_the_frontier_reaches_them() -> None:
    plan = chain_plan()
    state = RunState(plan)
    state.start()
    state.succeeded(0, 1, OK)  # the renders are queued now
    state.succeeded(1, 1, OK)
    found = demand([(plan, state.status)], unit)
    # merge waits on r1 and r2 (queued): upcoming; publish waits on merge (pending): not yet.
    assert found == {
        "gpu": QueueDemand(queued=2, seconds=2.0),
        "io": QueueDemand(upcoming=1, seconds=1.0),
    }


def test_a_finished_run_has_no_demand() -> None:
    plan = chain_plan()
    state = RunState(plan)
    state.start()
    state.cancel()
    assert demand([(plan, state.status)], unit) == {}


def test_a_step_waiting_out_its_retry_backoff_counts_as_retrying() -> None:
    from aexec.retry import RetryPolicy
    from aexec.types import ErrorInfo

    plan = build("p", [StepSpec(key="a", name="a", queue="q", retry=RetryPolicy(2))])
    state = RunState(plan)
    state.start()
    state.failed(0, 1, ErrorInfo("ValueError", "boom"))
    assert demand([(plan, state.status)], unit) == {"q": QueueDemand(retrying=1, seconds=1.0)}


def test_runs_add_up_and_steps_are_weighted_by_their_observed_mean_duration() -> None:
    plan = chain_plan()
    durations = Durations()
    render = plan.steps[1]
    durations.observe("room", render, 10.0)
    durations.observe("room", render, 20.0)  # mean 15 s
    runs = []
    for _ in range(4):
        state = RunState(plan)
        state.start()
        runs.append((plan, state.status))
    found = demand(runs, durations.mean)
    assert found["gpu"] == QueueDemand(upcoming=12, seconds=12 * 15.0)
    # fetch is unobserved, but its queue is not: io has no observation either → default
    assert found["io"] == QueueDemand(queued=4, seconds=4 * DEFAULT_DURATION)


def test_an_unobserved_step_takes_its_queues_mean_then_the_default() -> None:
    plan = chain_plan()
    durations = Durations(default=7.0)
    fetch, merge = plan.steps[0], plan.steps[4]
    assert durations.mean("room", merge) == 7.0
    durations.observe("room", fetch, 3.0)
    assert durations.mean("room", merge) == 3.0  # merge shares fetch's queue
    assert durations.mean("other", fetch) == 3.0  # another pipeline's fetch: the queue's mean
    durations.observe("room", merge, 5.0)
    assert durations.mean("room", merge) == 5.0
    assert durations.mean("room", fetch) == pytest.approx(3.0)
