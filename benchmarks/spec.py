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
    :mod:`benchmarks.workloads`.  ``service`` runs aexec through an ``aexec coordinator``
    subprocess (so its peak RSS is measured), as every workload with ``runs > 1`` does.
    ``scale`` workloads prove the limits: they run only when named (``--only`` or
    ``--scale``), with a longer cap per repetition, and only against the raw floor.
    ``aexec_only`` workloads compare two ways of writing one shape in aexec (a map and
    its static fan-out): they run against the raw floor only.
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
    service: bool = False
    scale: bool = False
    aexec_only: bool = False

    @property
    def through_coordinator(self) -> bool:
        return self.runs > 1 or self.service

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
        "fan_out_10000",
        "root -> 10,000 no-op steps -> one join, static, through one `aexec coordinator`",
        "fan_out",
        (1, 10000, 1),
        3,
        1,
        {"n": 10000},
        service=True,
        aexec_only=True,
    ),
    Workload(
        "map_10000",
        "fan_out_10000 as a map expanded at run time: join(noop.map(items(10000)))",
        "mapped",
        (1, 10000, 1),
        3,
        1,
        {"n": 10000},
        service=True,
        aexec_only=True,
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

#: Cap on one repetition of a scale workload, in seconds (the floor alone needs ~100 s for
#: 110,002 dependent steps on 2 cores).
SCALE_TIMEOUT = 900.0

SCALE_WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "chain_of_chords_10000",
        "noop, 10,000 x [10 parallel -> 1], noop through one `aexec coordinator`",
        "chain_of_chords",
        chain_of_chords_waves(10000),
        1,
        1,
        {"n": 10000},
        service=True,
        scale=True,
    ),
    Workload(
        "embedded_chain_of_chords_10000",
        "chain_of_chords_10000 in one process: no broker, SQLite store",
        "chain_of_chords",
        chain_of_chords_waves(10000),
        1,
        1,
        {"n": 10000},
        embedded=True,
        scale=True,
    ),
    Workload(
        "many_runs_2000",
        "2,000 concurrent runs x 50 no-op steps through one coordinator",
        "independent",
        (50,),
        1,
        1,
        {"n": 50},
        runs=2000,
        scale=True,
    ),
)

BY_NAME = {w.name: w for w in (*WORKLOADS, *SCALE_WORKLOADS)}
