"""The pure limits core: step limit specs, the limiter's gates, token buckets."""

from __future__ import annotations

import pytest

from aexec import pipeline, step
from aexec.errors import DefinitionError, PlanError
from aexec.limits import Limiter, Rate, StepLimits, refill, take_tokens
from aexec.plan import Plan


def test_rates_parse_per_second_minute_and_hour() -> None:
    assert Rate.parse("10/s") == Rate(10, 1.0)
    assert Rate.parse("100/m") == Rate(100, 60.0)
    assert Rate.parse(" 1000 / h ") == Rate(1000, 3600.0)
    assert str(Rate.parse("1000/h")) == "1000/h"


@pytest.mark.parametrize("text", ["10", "0/s", "-1/s", "10/d", "ten/s", "1.5/s", ""])
def test_a_malformed_rate_is_a_plan_error_naming_the_format(text: str) -> None:
    with pytest.raises(PlanError, match="rate_limit must look like '10/s'"):
        Rate.parse(text)


def test_step_options_are_checked_where_the_step_is_declared() -> None:
    with pytest.raises(DefinitionError, match="concurrency must be a positive integer"):
        step(concurrency=0)(lambda: None)
    with pytest.raises(DefinitionError, match="rate_limit must look like"):
        step(rate_limit="fast")(lambda: None)
    with pytest.raises(DefinitionError, match="limit_key needs a limit"):
        step(limit_key="tenant")(lambda: None)


def test_limits_travel_with_the_plan_and_unlimited_plans_keep_their_digest() -> None:
    @step(concurrency=2, uses=("gpu", "db"), rate_limit="5/m", limit_key="tenant")
    def limited(tenant: str) -> None: ...

    @step
    def free() -> None: ...

    @pipeline
    def both(tenant: str = "acme") -> None:
        limited(tenant)
        free()

    @pipeline
    def only_free() -> None:
        free()

    plan = both.compile().plan
    limits = plan.step("limited").limits
    assert limits == StepLimits(2, ("gpu", "db"), Rate(5, 60.0), "tenant", "acme", None)
    assert plan.step("free").limits is None
    again = Plan.from_bytes(plan.to_bytes())
    assert again.step("limited").limits == limits
    assert again.digest == plan.digest
    # A plan without limits has exactly the wire form (and digest) it had before limits.
    wire = only_free.compile().plan.to_wire()
    assert all(len(s) == 8 for s in wire[2])


def test_a_limit_key_is_an_argument_else_a_pipeline_parameter_else_an_error() -> None:
    @step(concurrency=1, limit_key="tenant")
    def serve(i: int, tenant: str = "") -> None: ...

    @step
    def who() -> str:
        return "t"

    @pipeline
    def keyed(tenant: str) -> None:
        serve.alias("by_arg")(1, tenant="argument")
        serve.alias("by_param")(2)
        serve.alias("by_output")(3, who())

    plan = keyed.compile(tenant="param").plan
    assert plan.step("by_arg").limits.key == "argument"  # type: ignore[union-attr]
    assert plan.step("by_param").limits.key == "param"  # type: ignore[union-attr]
    by_output = plan.step("by_output").limits
    assert by_output is not None and by_output.key is None and by_output.key_input == 0

    @pipeline
    def unkeyed() -> None:
        serve(1)

    with pytest.raises(DefinitionError, match="limit_key 'tenant' is neither an argument"):
        unkeyed.compile()


def _gates(limiter: Limiter, name: str, limits: StepLimits, key: str | None = None):  # type: ignore[no-untyped-def]
    return limiter.gates(name, limits, key)


def test_a_cap_admits_up_to_its_capacity_and_each_release_admits_the_next() -> None:
    limiter = Limiter()
    limits = StepLimits(concurrency=2)
    gates = _gates(limiter, "s", limits)
    assert [limiter.admit(("r", i), gates, "r") for i in range(4)] == [True, True, False, False]
    assert limiter.waits_on(("r", 2)) == "step:s"
    assert limiter.release(("r", 0)) == [("r", 2)]
    assert limiter.release(("r", 0)) == []  # released once
    assert limiter.release(("r", 1)) == [("r", 3)]
    assert limiter.usage()["step:s"] == (2, 0)


def test_waiting_tickets_are_served_round_robin_by_fairness_key() -> None:
    limiter = Limiter({"pool": 1})
    gates = _gates(limiter, "s", StepLimits(uses=("pool",)))
    assert limiter.admit(("big", 0), gates, "big")
    for i in range(1, 5):
        limiter.admit(("big", i), gates, "big")
    limiter.admit(("small", 0), gates, "small")
    limiter.admit(("small", 1), gates, "small")
    served = []
    ticket = ("big", 0)
    for _ in range(6):
        (ticket,) = limiter.release(ticket)
        served.append(ticket[0])
    assert served == ["big", "small", "big", "small", "big", "big"]


def test_a_ticket_takes_all_its_gates_or_waits_on_the_first_full_one() -> None:
    limiter = Limiter({"gpu": 1})
    own = _gates(limiter, "a", StepLimits(concurrency=5, uses=("gpu",)))
    other = _gates(limiter, "b", StepLimits(uses=("gpu",)))
    assert limiter.admit(("r", 0), other, "r")  # holds the gpu
    assert not limiter.admit(("r", 1), own, "r")
    assert limiter.waits_on(("r", 1)) == "limit:gpu"
    assert limiter.usage()["step:a"] == (0, 0)  # nothing taken while it waits
    assert limiter.release(("r", 0)) == [("r", 1)]
    assert limiter.usage()["step:a"] == (1, 0)


def test_per_key_caps_are_separate_gates() -> None:
    limiter = Limiter()
    limits = StepLimits(concurrency=1, key_name="tenant")
    a, b = _gates(limiter, "s", limits, "a"), _gates(limiter, "s", limits, "b")
    assert limiter.admit(("r", 0), a, "a")
    assert limiter.admit(("r", 1), b, "b")
    assert not limiter.admit(("r", 2), a, "a")
    assert limiter.waits_on(("r", 2)) == "step:s[a]"


def test_forgetting_a_run_frees_what_it_held_and_drops_what_it_waited_for() -> None:
    limiter = Limiter()
    gates = _gates(limiter, "s", StepLimits(concurrency=1))
    assert limiter.admit(("gone", 0), gates, "gone")
    limiter.admit(("gone", 1), gates, "gone")
    limiter.admit(("kept", 0), gates, "kept")
    assert limiter.forget_run("gone") == [("kept", 0)]
    assert not limiter.release(("kept", 0))
    assert not limiter


def test_a_ticket_running_before_a_takeover_occupies_its_cap_even_over_capacity() -> None:
    limiter = Limiter()
    gates = _gates(limiter, "s", StepLimits(concurrency=1))
    limiter.occupy(("r", 0), gates)
    limiter.occupy(("r", 1), gates)
    assert not limiter.admit(("r", 2), gates, "r")
    assert limiter.release(("r", 0)) == []  # still one over
    assert limiter.release(("r", 1)) == [("r", 2)]


def test_a_rate_gate_asks_for_tokens_once_and_admits_as_many_as_granted() -> None:
    limiter = Limiter()
    gates = _gates(limiter, "s", StepLimits(rate=Rate(2, 1.0)))
    assert not any(limiter.admit(("r", i), gates, "r") for i in range(3))
    ((gate, want),) = limiter.token_requests(now=0.0)
    assert (gate.name, want) == ("rate:s", 3)
    assert limiter.token_requests(now=0.0) == []  # one request out at a time
    assert limiter.grant("rate:s", 2, 0.5, now=10.0) == [("r", 0), ("r", 1)]
    assert limiter.token_requests(now=10.2) == []  # not before retry_in
    assert limiter.next_request() == 10.5
    ((_, want),) = limiter.token_requests(now=10.5)
    assert want == 1
    assert limiter.grant("rate:s", 1, 0.0, now=11.0) == [("r", 2)]


def test_a_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    rate = Rate(10, 1.0)
    assert refill(0.0, 0.25, rate) == 2.5
    assert refill(5.0, 100.0, rate) == 10.0
    left, granted, retry = take_tokens(2.5, 5, rate)
    assert (left, granted) == (0.5, 2)
    assert retry == pytest.approx(0.05)
    assert take_tokens(10.0, 3, rate) == (7.0, 3, 0.0)
