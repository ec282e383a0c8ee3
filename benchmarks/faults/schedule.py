"""The seeded fault schedule: which faults, when, aimed where.

:func:`plan_faults` draws every fault's kind, offset and target choices from
``random.Random(seed)`` before anything starts, so the same seed always gives the same
schedule; what each target choice lands on (which run is in flight, which coordinator's
reply queue exists) is decided when the fault fires.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

KINDS: dict[str, str] = {
    "worker-kill": "SIGKILL a worker, start it again after a pause",
    "worker-restart": "SIGTERM a worker and start a new one under the same name at once",
    "coordinator-kill": "SIGKILL a coordinator, start it again after a pause",
    "broker-close": "rabbitmqctl close_all_connections",
    "broker-restart": "rabbitmqctl stop_app, a pause, start_app",
    "db-cut": "reset a coordinator's PostgreSQL connections (TCP proxy)",
    "db-stall": "hold a coordinator's PostgreSQL traffic for longer than the lease",
    "cancel": "cancel a run in flight (Run.cancel)",
    "malformed": "publish a malformed body to a step, submit or reply queue",
    "oversized": "publish a body over the message size limit to a step, submit or reply queue",
    "duplicate": "publish again a completion, step message or submission seen on the wire",
    "poison-run": "submit a run whose step error has a NUL byte, or a submission with an "
    "absurd run id",
}
"""Every fault kind, with what it does."""

WEIGHTS: dict[str, float] = {
    "worker-kill": 10,
    "worker-restart": 8,
    "coordinator-kill": 6,
    "broker-close": 5,
    "broker-restart": 3,
    "db-cut": 6,
    "db-stall": 4,
    "cancel": 14,
    "malformed": 16,
    "oversized": 2,
    "duplicate": 22,
    "poison-run": 2,
}


@dataclass(frozen=True, slots=True)
class PlannedFault:
    """Fault ``kind`` at ``at`` seconds into the campaign.

    ``choice`` (in [0, 1)) picks the target among those that exist when it fires;
    ``pause`` (seconds) is how long the fault lasts where it lasts (a process down, the
    broker stopped, the database stalled, beyond the lease for a stall); ``variant`` picks
    among the forms of the fault (which malformed body, which duplicate)."""

    index: int
    at: float
    kind: str
    choice: float
    pause: float
    variant: int


def plan_faults(
    rng: random.Random, count: int, start: float, end: float, kinds: tuple[str, ...]
) -> list[PlannedFault]:
    """``count`` faults between ``start`` and ``end`` seconds: one of each of ``kinds``
    (when ``count`` allows), the rest drawn by :data:`WEIGHTS`; in time order."""
    drawn = list(kinds[:count])
    weights = [WEIGHTS[k] for k in kinds]
    drawn.extend(rng.choices(kinds, weights, k=count - len(drawn)))
    offsets = sorted(round(rng.uniform(start, end), 3) for _ in drawn)
    rng.shuffle(drawn)
    return [
        PlannedFault(i, at, kind, rng.random(), round(rng.uniform(0.2, 3.0), 2), rng.randrange(64))
        for i, (at, kind) in enumerate(zip(offsets, drawn, strict=True))
    ]


def parse_kinds(text: str | None) -> tuple[str, ...]:
    """``--kinds`` (comma-separated, ``-kind`` leaves one out) as kinds; ValueError if a
    name is unknown."""
    if not text:
        return tuple(KINDS)
    chosen: list[str] = []
    removed: set[str] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name = item.removeprefix("-")
        if name not in KINDS:
            raise ValueError(f"unknown fault kind {name!r} (known: {', '.join(KINDS)})")
        if item.startswith("-"):
            removed.add(name)
        else:
            chosen.append(name)
    base = chosen or list(KINDS)
    return tuple(k for k in base if k not in removed)
