"""Limits on running work: what a step declares, and the pure decision of which waiting
step may go next.  No I/O, no event loop.

A step declares its limits with ``@step(concurrency=N, uses="name", rate_limit="10/s",
limit_key="tenant")`` (:class:`StepLimits`, carried in the plan):

- ``concurrency=N`` caps the running attempts of the step (by name) across all runs; with
  ``limit_key`` the cap holds per key value (N per tenant).
- ``uses="gpu"`` (or a tuple of names) takes one slot of each named limit, whose sizes come
  from the coordinator's configuration (``limits: {gpu: 2}``); one name, one cap, shared by
  every step that uses it.
- ``rate_limit="10/s"`` (or ``/m``, ``/h``) starts at most that many attempts of the step
  per period, as a token bucket whose tokens a coordinator takes from the store (so the
  rate holds across coordinators sharing a database).
- ``limit_key`` names a step argument (or else a pipeline parameter) whose value is the
  step's key: its per-key cap, and the fairness key under which waiting steps are served
  round-robin (without one, a step's run is its fairness key).

:class:`Limiter` keeps every *gate* (one cap or one bucket) with the tickets (``(run_id,
step index)``) that hold or wait for it.  A ticket takes all its gates at once or waits in
the queue of the first one that is full; when a slot frees (or tokens arrive), the gate
serves its waiters round-robin by fairness key, and one served that finds another of its
gates full moves to that gate's queue.  The coordinator feeds it and publishes what it
admits; steps that wait stay in the coordinator, not in the broker.
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aexec.errors import PlanError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([smh])\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` attempts per ``per`` seconds (also the bucket's burst)."""

    count: int
    per: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``"10/s"``, ``"100/m"``, ``"1000/h"``; a :class:`PlanError` for anything else."""
        match = _RATE.match(text) if isinstance(text, str) else None
        if match is None or int(match.group(1)) < 1:
            raise PlanError(
                f"rate_limit must look like '10/s', '100/m' or '1000/h' (a positive count), "
                f"not {text!r}"
            )
        return cls(int(match.group(1)), _UNITS[match.group(2)])

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}.get(self.per)
        return f"{self.count}/{unit}" if unit else f"{self.count}/{self.per:g}s"


@dataclass(frozen=True, slots=True)
class StepLimits:
    """The limits of one step in a plan (see the module docstring).

    ``key`` is the step's limit key when it was known at compile time (a constant argument
    or a pipeline parameter); ``key_input`` the position, among the step's inputs, of the
    upstream output that holds it otherwise.  ``key_name`` is what ``limit_key`` named."""

    concurrency: int | None = None
    uses: tuple[str, ...] = ()
    rate: Rate | None = None
    key_name: str | None = None
    key: str | None = None
    key_input: int | None = None

    def to_wire(self) -> list[Any]:
        return [
            self.concurrency,
            list(self.uses),
            None if self.rate is None else str(self.rate),
            self.key_name,
            self.key,
            self.key_input,
        ]

    @classmethod
    def from_wire(cls, wire: Any) -> StepLimits:
        try:
            concurrency, uses, rate, key_name, key, key_input = wire
            limits = cls(
                concurrency,
                tuple(uses),
                None if rate is None else Rate.parse(rate),
                key_name,
                key,
                key_input,
            )
        except PlanError:
            raise
        except (TypeError, ValueError) as exc:
            raise PlanError(f"malformed step limits: {exc}") from exc
        limits.check()
        return limits

    def check(self) -> None:
        """A :class:`PlanError` naming what is wrong with these limits."""
        c = self.concurrency
        if c is not None and (not isinstance(c, int) or isinstance(c, bool) or c < 1):
            raise PlanError(f"concurrency must be a positive integer, not {c!r}")
        if not all(isinstance(u, str) and u for u in self.uses):
            raise PlanError(f"uses must name limits (non-empty strings), not {self.uses!r}")
        if self.key is not None and not isinstance(self.key, str):
            raise PlanError("a step's limit key must be a string")
        if self.key_input is not None and (
            not isinstance(self.key_input, int) or self.key_input < 0
        ):
            raise PlanError("a step's limit key input must be an input position")


def describe(name: str, limits: StepLimits, key: str | None = None) -> str:
    """The limits step ``name`` waits for, as ``runs show`` says it: ``concurrency limit
    render[acme] or limit gpu or rate limit render (10/s)``."""
    parts: list[str] = []
    if limits.concurrency is not None:
        keyed = (
            f"[{key}]" if key is not None else (f"[{limits.key_name}]" if limits.key_name else "")
        )
        parts.append(f"concurrency limit {name}{keyed} ({limits.concurrency})")
    parts += [f"limit {use}" for use in limits.uses]
    if limits.rate is not None:
        parts.append(f"rate limit {name} ({limits.rate})")
    return " or ".join(parts)


def key_text(value: Any) -> str:
    """A limit key as text (a tenant id may be an int)."""
    return value if isinstance(value, str) else repr(value)


Ticket = tuple[str, int]
"""``(run_id, step index)``: one step of one run, waiting for or holding its gates."""


class Gate:
    """One cap (``capacity`` slots) or one token bucket (``rate``), with the tickets that
    wait for it, queued per fairness key and served round-robin."""

    __slots__ = (
        "capacity",
        "in_use",
        "name",
        "rate",
        "requesting",
        "retry_at",
        "tokens",
        "waiting",
    )

    def __init__(self, name: str, capacity: int | None = None, rate: Rate | None = None) -> None:
        self.name = name
        self.capacity = capacity
        self.rate = rate
        self.in_use = 0
        self.tokens = 0
        self.requesting = False  # a request for tokens is out
        self.retry_at = 0.0  # no request for tokens before this (seconds on the event loop's clock)
        # fairness key → its waiting tickets; the dict's order is the round-robin order
        self.waiting: dict[str, collections.deque[Ticket]] = {}

    @property
    def free(self) -> bool:
        if self.rate is not None:
            return self.tokens > 0
        return self.capacity is None or self.in_use < self.capacity

    def take(self) -> None:
        if self.rate is not None:
            self.tokens -= 1
        else:
            self.in_use += 1

    def wait(self, fairness: str, ticket: Ticket) -> None:
        queue = self.waiting.get(fairness)
        if queue is None:
            queue = self.waiting[fairness] = collections.deque()
        queue.append(ticket)

    def next_waiting(self) -> Ticket | None:
        """The next waiting ticket, round-robin by fairness key (its key goes to the back)."""
        waiting = self.waiting
        while waiting:
            fairness = next(iter(waiting))
            queue = waiting.pop(fairness)
            ticket = queue.popleft()
            if queue:
                waiting[fairness] = queue  # re-inserted: the back of the round
            return ticket
        return None

    @property
    def waiters(self) -> int:
        return sum(len(q) for q in self.waiting.values())


class Gates:
    """The gates of one step (with one limit key), as :meth:`Limiter.gates` finds them once
    and a ticket carries them: all of them, and the caps among them (the gates a holder
    takes a slot of, which it takes in the store too)."""

    __slots__ = ("all", "capped", "caps")

    def __init__(self, gates: tuple[Gate, ...]) -> None:
        self.all = gates
        self.capped = tuple(g for g in gates if g.rate is None)
        self.caps: tuple[tuple[str, int], ...] = tuple(
            (g.name, g.capacity) for g in self.capped if g.capacity is not None
        )

    def __iter__(self) -> Iterator[Gate]:
        return iter(self.all)


@dataclass(slots=True)
class _Entry:
    gates: Gates
    fairness: str
    held: bool = False
    waits_on: Gate | None = None


class Limiter:
    """Every gate of the steps a coordinator drives (see the module docstring).

    ``capacities`` are the named limits (``limits:`` in the configuration); a step that
    uses a name not among them is not limited by it.  Tickets are the caller's: it admits
    a ticket when the step is ready (:meth:`admit`), releases it when the step's attempt
    ends (:meth:`release`), and publishes every ticket these return as admitted."""

    __slots__ = ("_cache", "_capacities", "_entries", "_gates", "_rated", "_runs", "slots")

    def __init__(self, capacities: Mapping[str, int] | None = None) -> None:
        self._capacities = dict(capacities or {})
        self._gates: dict[str, Gate] = {}
        self._rated: list[Gate] = []  # the token buckets among the gates (asked each pass)
        self._cache: dict[tuple[str, StepLimits, str | None], Gates] = {}
        self._entries: dict[Ticket, _Entry] = {}
        self._runs: dict[str, set[Ticket]] = {}
        # run → step index → the attempt whose slots of caps in the store this coordinator
        # frees when the step's attempt ends (it took them, or took their run over)
        self.slots: dict[str, dict[int, int]] = {}

    def __bool__(self) -> bool:
        """True while any ticket holds or waits for a gate, or a step holds slots of caps
        in the store that this coordinator frees."""
        return bool(self._entries) or bool(self.slots)

    # -- gates -----------------------------------------------------------------------------

    def gates(self, name: str, limits: StepLimits, key: str | None) -> Gates:
        """The gates of step ``name`` with ``limits`` and limit key ``key``."""
        cached = self._cache.get((name, limits, key))
        if cached is not None:
            return cached
        found: list[Gate] = []
        if limits.concurrency is not None:
            gate_name = f"step:{name}" if key is None else f"step:{name}[{key}]"
            found.append(self._gate(gate_name, capacity=limits.concurrency))
        for use in limits.uses:
            capacity = self._capacities.get(use)
            if capacity is not None:
                found.append(self._gate(f"limit:{use}", capacity=capacity))
        if limits.rate is not None:
            found.append(self._gate(f"rate:{name}", rate=limits.rate))
        gates = self._cache[(name, limits, key)] = Gates(tuple(found))
        return gates

    def _gate(self, name: str, capacity: int | None = None, rate: Rate | None = None) -> Gate:
        gate = self._gates.get(name)
        if gate is None:
            gate = self._gates[name] = Gate(name, capacity, rate)
            if rate is not None:
                self._rated.append(gate)
        return gate

    # -- tickets ---------------------------------------------------------------------------

    def admit(self, ticket: Ticket, gates: Gates, fairness: str) -> bool:
        """Step ``ticket`` is ready: True if it may go now (it holds its gates until
        :meth:`release`), False if it waits (it is returned by a later call once it may).
        A ticket that holds its gates already (a new attempt of a step whose attempt was
        lost) goes at once; one that waits already keeps its place."""
        entry = self._entries.get(ticket)
        if entry is not None:
            return entry.held
        entry = _Entry(gates, fairness)
        self._entries[ticket] = entry
        self._runs.setdefault(ticket[0], set()).add(ticket)
        return self._try(ticket, entry)

    def occupy(self, ticket: Ticket, gates: Gates) -> None:
        """Step ``ticket`` is running already (a run taken over): it holds its caps, even
        over their capacity, and takes no token."""
        if ticket in self._entries:
            return
        self._entries[ticket] = _Entry(gates, ticket[0], held=True)
        self._runs.setdefault(ticket[0], set()).add(ticket)
        for gate in gates.capped:
            gate.in_use += 1

    def _try(self, ticket: Ticket, entry: _Entry) -> bool:
        gates = entry.gates.all
        for gate in gates:
            if not gate.free:
                entry.waits_on = gate
                gate.wait(entry.fairness, ticket)
                return False
        for gate in gates:
            gate.take()
        entry.held = True
        entry.waits_on = None
        return True

    def release(self, ticket: Ticket) -> list[Ticket]:
        """Step ``ticket``'s attempt ended (or it will not run): its slots free up.  Returns
        the waiting tickets now admitted."""
        entry = self._entries.pop(ticket, None)
        if entry is None:
            return []
        tickets = self._runs.get(ticket[0])
        if tickets is not None:
            tickets.discard(ticket)
            if not tickets:
                del self._runs[ticket[0]]
        if not entry.held:
            if entry.waits_on is not None:
                _unqueue(entry.waits_on, entry.fairness, ticket)
            return []
        freed = entry.gates.capped
        for gate in freed:
            gate.in_use -= 1
        return self._serve(freed)

    def forget_run(self, run_id: str) -> list[Ticket]:
        """Run ``run_id`` ended or is driven elsewhere now: drop its tickets.  Returns the
        waiting tickets (of other runs) now admitted."""
        tickets = sorted(self._runs.get(run_id, ()), key=lambda t: self._entries[t].held)
        admitted: list[Ticket] = []
        for ticket in tickets:  # those that wait first: none of them is admitted meanwhile
            admitted.extend(self.release(ticket))
        return admitted

    def grant(self, gate_name: str, tokens: int, retry_in: float, now: float) -> list[Ticket]:
        """``tokens`` of rate gate ``gate_name`` came from the store; more may be asked for
        in ``retry_in`` seconds (from ``now``, on the event loop's clock).  Returns the
        tickets admitted."""
        gate = self._gates.get(gate_name)
        if gate is None:
            return []
        gate.requesting = False
        gate.tokens += tokens
        gate.retry_at = now + retry_in  # the store's bucket is empty until then
        return self._serve([gate])

    def token_requests(self, now: float) -> list[tuple[Gate, int]]:
        """The rate gates that need tokens now, each with how many (marked as requesting
        until :meth:`grant`)."""
        wanted: list[tuple[Gate, int]] = []
        for gate in self._rated:
            if gate.waiting and gate.tokens == 0 and not gate.requesting and gate.retry_at <= now:
                gate.requesting = True
                wanted.append((gate, gate.waiters))
        return wanted

    def next_request(self) -> float | None:
        """When (on the event loop's clock) a rate gate that waits may ask for tokens
        again, if one does."""
        times = [
            g.retry_at for g in self._rated if g.waiting and not g.requesting and g.retry_at > 0
        ]
        return min(times) if times else None

    def _serve(self, gates: Iterable[Gate]) -> list[Ticket]:
        admitted: list[Ticket] = []
        for gate in gates:
            if not gate.waiting:
                continue
            while gate.free:
                ticket = gate.next_waiting()
                if ticket is None:
                    break
                entry = self._entries[ticket]
                entry.waits_on = None
                if self._try(ticket, entry):
                    admitted.append(ticket)
        return admitted

    def holds(self, ticket: Ticket) -> bool:
        """True if ``ticket`` holds its gates."""
        entry = self._entries.get(ticket)
        return entry is not None and entry.held

    def caps(self, ticket: Ticket) -> tuple[tuple[str, int], ...]:
        """The caps (``(gate name, capacity)``) that ``ticket`` holds or waits for: those
        whose slots it takes in the store too, so that they hold across coordinators."""
        entry = self._entries.get(ticket)
        return () if entry is None else entry.gates.caps

    # -- introspection ---------------------------------------------------------------------

    def waits_on(self, ticket: Ticket) -> str | None:
        """Why ``ticket`` waits: the gate it waits for (``step:NAME``, ``step:NAME[KEY]``,
        ``limit:NAME``, ``rate:NAME``), or None if it does not."""
        entry = self._entries.get(ticket)
        if entry is None or entry.waits_on is None:
            return None
        return entry.waits_on.name

    def usage(self) -> dict[str, tuple[int, int]]:
        """Each gate's ``(in use, waiting)``."""
        return {name: (g.in_use, g.waiters) for name, g in self._gates.items()}


def _unqueue(gate: Gate, fairness: str, ticket: Ticket) -> None:
    queue = gate.waiting.get(fairness)
    if queue is None:
        return
    try:
        queue.remove(ticket)
    except ValueError:
        return
    if not queue:
        del gate.waiting[fairness]


def retry_after(tokens: float, rate: Rate) -> float:
    """Seconds until a bucket holding ``tokens`` (< 1) has one."""
    return max(0.0, (1.0 - tokens) * rate.per / rate.count)


def refill(tokens: float, elapsed: float, rate: Rate) -> float:
    """A bucket's tokens ``elapsed`` seconds after it held ``tokens``."""
    return min(float(rate.count), tokens + max(0.0, elapsed) * rate.count / rate.per)


def take_tokens(tokens: float, want: int, rate: Rate) -> tuple[float, int, float]:
    """Take up to ``want`` whole tokens from a bucket holding ``tokens`` (refilled): the
    tokens left, those granted, and the seconds until the next one if none are left."""
    granted = min(want, math.floor(tokens))
    left = tokens - granted
    return left, granted, (retry_after(left, rate) if left < 1 else 0.0)


__all__ = [
    "Gate",
    "Gates",
    "Limiter",
    "Rate",
    "StepLimits",
    "Ticket",
    "describe",
    "key_text",
    "refill",
    "retry_after",
    "take_tokens",
]
