"""What is measured: the workloads (their names are the JSON keys) and their shapes.

Every workload is a layered DAG of no-op steps in which each layer depends on the whole
layer before it, so it is fully described by its layer sizes (``waves``).  The raw floor
sends exactly those messages, wave after wave; aexec, Celery and Dask express the same
DAG the way a user of each would.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Workload:
    """One benchmark workload.

    ``waves`` are the layer sizes of one run; ``runs`` runs go concurrently (``many_runs``).
    ``params`` are the aexec pipeline's parameters; ``pipeline`` names it in
    :mod:`benchmarks.workloads`.
    """

    name: str
    description: str
    pipeline: str
    waves: tuple[int, ...]
    repetitions: int
    quick_repetitions: int
    params: dict[str, int] = field(default_factory=dict)
    runs: int = 1
    embedded: bool = False

    @property
    def steps_per_run(self) -> int:
        return sum(self.waves)

    @property
    def steps(self) -> int:
        return self.steps_per_run * self.runs


def chain_of_chords_waves(n: int, width: int = 10) -> tuple[int, ...]:
    """noop, n x [width parallel -> 1], noop."""
    return (1, *([width, 1] * n), 1)


WORKLOADS: tuple[Workload, ...] = (
    Workload("roundtrip", "one no-op step, submit to result", "roundtrip", (1,), 30, 10),
    Workload(
        "independent_1000",
        "1,000 independent no-op steps",
        "independent",
        (1000,),
        5,
        3,
        {"n": 1000},
    ),
    Workload("chord_100", "100 adds -> their sum (a chord)", "chord", (100, 1), 10, 3, {"n": 100}),
    Workload(
        "ovh_57",
        "noop, 5 x [10 parallel -> 1], noop (57 steps)",
        "chain_of_chords",
        chain_of_chords_waves(5),
        10,
        3,
        {"n": 5},
    ),
    Workload(
        "chain_of_chords_100",
        "noop, 100 x [10 parallel -> 1], noop",
        "chain_of_chords",
        chain_of_chords_waves(100),
        5,
        1,
        {"n": 100},
    ),
    Workload(
        "chain_of_chords_1000",
        "noop, 1,000 x [10 parallel -> 1], noop",
        "chain_of_chords",
        chain_of_chords_waves(1000),
        3,
        1,
        {"n": 1000},
    ),
    Workload(
        "parallel_50",
        "the dagster-celery quick start: 50 no-op steps",
        "independent",
        (50,),
        10,
        3,
        {"n": 50},
    ),
    Workload(
        "many_runs",
        "200 concurrent runs x 50 no-op steps through one coordinator",
        "independent",
        (50,),
        3,
        1,
        {"n": 50},
        runs=200,
    ),
    Workload(
        "embedded_chain_of_chords_1000",
        "chain_of_chords_1000 in one process: no broker, SQLite store",
        "chain_of_chords",
        chain_of_chords_waves(1000),
        5,
        2,
        {"n": 1000},
        embedded=True,
    ),
)

BY_NAME = {w.name: w for w in WORKLOADS}
