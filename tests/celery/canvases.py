"""The OVHcloud article's workflows, written with Celery exactly as the article does
(``../shared/seeds/003``), for any ``noop`` task."""

from __future__ import annotations

from typing import Any

from celery import chain, chord, group


def chain_of_chords(noop: Any) -> Any:
    """A few chords chained together (57 tasks in total)."""
    workflow = chain([
        noop.s(0),
        chord([noop.s(i) for i in range(10)], noop.s()),
        chord([noop.s(i) for i in range(10)], noop.s()),
        chord([noop.s(i) for i in range(10)], noop.s()),
        chord([noop.s(i) for i in range(10)], noop.s()),
        chord([noop.s(i) for i in range(10)], noop.s()),
        noop.s()
    ])  # fmt: skip
    return workflow


def nested_graph(noop: Any) -> Any:
    """More complex graph structure built from chains and groups (23 tasks in total)."""
    # | is 'chain' operator in celery
    workflow = (
        group(
            group(
                group([noop.s() for i in range(5)]),
                chain([noop.s() for i in range(5)])
            ) |
            noop.s() |
            group([noop.s() for i in range(5)]) |
            noop.s(),
            chain([noop.s() for i in range(5)])
        ) |
        noop.s()
    )  # fmt: skip
    return workflow


def chain_of_n_chords(noop: Any, n: int) -> Any:
    """The benchmarks' chain of ``n`` chords: noop, n x [10 -> 1], noop."""
    return chain([noop.s(0), *[chord([noop.s(i) for i in range(10)], noop.s()) for _ in range(n)],
                  noop.s()])  # fmt: skip
