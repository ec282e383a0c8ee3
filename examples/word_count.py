"""Real data between steps: build a corpus, count words per shard in parallel, merge.

The corpus (about 1 MB) is larger than the inline threshold, so it travels between
steps through the object store (a directory under AEXEC_HOME in embedded mode), and only
a reference crosses the transport.  ``count`` is a plain (sync) function: it runs in the
worker's thread pool and reports progress through ``aexec.current()``.

    python -m aexec run examples/word_count.py -p shards=8 -p top=5
"""

import collections
import random

import aexec
from aexec import pipeline, step

WORDS = [
    "pipeline",
    "step",
    "queue",
    "worker",
    "broker",
    "store",
    "event",
    "retry",
    "chord",
    "chain",
    "priority",
    "message",
    "coordinator",
    "result",
    "object",
]


@step
def corpus(lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=12)) for _ in range(lines)]


@step
def count(lines: list[str], shard: int, shards: int) -> dict[str, int]:
    ctx = aexec.current()
    counts: collections.Counter[str] = collections.Counter()
    mine = lines[shard::shards]
    for n, line in enumerate(mine, 1):
        counts.update(line.split())
        if n % 2000 == 0:
            ctx.progress(n / len(mine), f"{n} lines")
    return dict(counts)


@step
def merge(partials: list[dict[str, int]], top: int) -> dict[str, object]:
    total: collections.Counter[str] = collections.Counter()
    for partial in partials:
        total.update(partial)
    return {"words": sum(total.values()), "top": total.most_common(top)}


@pipeline
def word_count(lines: int = 10_000, shards: int = 4, top: int = 3, seed: int = 7) -> object:
    text = corpus(lines, seed)
    return merge([count.alias(f"count_{i}")(text, i, shards) for i in range(shards)], top)
