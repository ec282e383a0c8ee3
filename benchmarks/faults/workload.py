"""The runs of a campaign: mixed shapes, sizes and arrival times drawn from the seed, and
what each run must end as.

A run's expectation depends only on its pipeline and parameters (:func:`expect`), so the
checker can judge any run found in the store, even one whose submission the campaign
thought had failed.  Every run gets its own ``tag``, which its result is computed from.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aexec import Pipeline
from benchmarks.faults import pipelines as p
from benchmarks.faults.model import Expected

Params = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Shape:
    """One pipeline of the mix: how to draw its parameters and what it must end as."""

    pipeline: Pipeline
    weight: float
    draw: Callable[[random.Random], Params]  # every parameter but ``tag``
    expect: Callable[[Mapping[str, Any]], Expected]

    @property
    def name(self) -> str:
        return self.pipeline.name


def _ms(rng: random.Random) -> int:
    return rng.randint(5, 30)


def _succeeds(
    result: Callable[[Mapping[str, Any]], Any],
) -> Callable[[Mapping[str, Any]], Expected]:
    return lambda params: Expected("succeeded", result=result(params))


def _fails(*steps: str) -> Callable[[Mapping[str, Any]], Expected]:
    return lambda params: Expected("failed", frozenset(steps))


def _mixed(q: Mapping[str, Any]) -> int:
    tag: int = q["tag"]
    return (tag + 1) + (tag + 1) + 3 * tag + 2 * tag + (p.BLOB_SIZE + tag % 256) + 1


SHAPES: tuple[Shape, ...] = (
    Shape(
        p.chain,
        14,
        lambda r: {"n": r.randint(2, 8), "ms": _ms(r)},
        _succeeds(lambda q: q["tag"] + q["n"]),
    ),
    Shape(
        p.fan_out,
        12,
        lambda r: {"n": r.randint(3, 12), "ms": _ms(r)},
        _succeeds(lambda q: [q["tag"] + i for i in range(q["n"])]),
    ),
    Shape(
        p.fan_in,
        12,
        lambda r: {"n": r.randint(4, 20), "ms": _ms(r)},
        _succeeds(lambda q: q["n"] * q["tag"] + q["n"] * (q["n"] - 1) // 2),
    ),
    Shape(
        p.retrying,
        10,
        lambda r: {"n": r.randint(1, 4), "succeed_on": r.randint(2, 3)},
        _succeeds(lambda q: q["n"] * (q["tag"] + 1)),
    ),
    Shape(p.failing, 8, lambda r: {"n": r.randint(1, 4), "ms": _ms(r)}, _fails("doomed")),
    Shape(
        p.slow_steps,
        8,
        lambda r: {"n": r.randint(1, 3), "seconds": round(r.uniform(1.2, 2.5), 2)},
        _succeeds(lambda q: q["n"] * (q["tag"] + 1)),
    ),
    Shape(
        p.remote,
        10,
        lambda r: {"n": r.randint(2, 6)},
        _succeeds(lambda q: q["n"] * 3 * q["tag"]),
    ),
    Shape(
        p.sync_chain,
        8,
        lambda r: {"n": r.randint(2, 6), "ms": _ms(r)},
        _succeeds(lambda q: q["tag"] * 2 ** q["n"]),
    ),
    Shape(
        p.mixed,
        8,
        lambda r: {"ms": _ms(r), "seconds": round(r.uniform(1.2, 2.0), 2), "succeed_on": 2},
        _succeeds(_mixed),
    ),
    Shape(
        p.gated,
        10,
        lambda r: {"seconds": round(r.uniform(3.0, 10.0), 2), "n": r.randint(2, 5), "ms": _ms(r)},
        _succeeds(lambda q: q["n"] * (q["tag"] + 1) + q["n"] * (q["n"] - 1) // 2),
    ),
    # Only the poison-run fault submits it: a step error with a NUL byte in it.
    Shape(p.poisoned, 0, lambda r: {}, _fails("nul")),
)
BY_NAME = {shape.name: shape for shape in SHAPES}
CANCELLABLE = "gated"  # the shape the cancel fault prefers: a long step early on


def expect(pipeline: str, params: Mapping[str, Any]) -> Expected | None:
    """What a run of ``pipeline`` with ``params`` must end as (None: not a campaign run)."""
    shape = BY_NAME.get(pipeline)
    if shape is None or "tag" not in params:
        return None
    try:
        return shape.expect(params)
    except (KeyError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class PlannedRun:
    """Submit a run of ``shape`` with ``params`` at ``at`` seconds into the campaign."""

    at: float
    shape: str
    params: Params
    priority: int

    @property
    def tag(self) -> int:
        tag: int = self.params["tag"]
        return tag


def plan_runs(rng: random.Random, count: int, window: float) -> list[PlannedRun]:
    """``count`` runs arriving in bursts (of 5 to 40 at once) over ``window`` seconds, the
    first burst at once; tags are 1..count in arrival order."""
    shapes = [s for s in SHAPES if s.weight > 0]
    weights = [s.weight for s in shapes]
    arrivals: list[float] = []
    while len(arrivals) < count:
        at = 0.0 if not arrivals else round(rng.uniform(0.0, window), 3)
        arrivals.extend([at] * min(rng.randint(5, 40), count - len(arrivals)))
    arrivals.sort()
    planned = []
    for tag, at in enumerate(arrivals, 1):
        shape = rng.choices(shapes, weights)[0]
        params = {"tag": tag, **shape.draw(rng)}
        planned.append(PlannedRun(at, shape.name, params, rng.randint(0, 5)))
    return planned
