"""Dynamic-pipeline benchmarks (issue 12), in one process with no broker.

    python -m benchmarks.dynamic [--repeat 7] [--json FILE]

- ``canvas_1000_chords``: building ``chain([noop.s(0), 1,000 x chord(10 -> 1), noop.s()])``
  with :mod:`aexec.canvas` and compiling it to a plan (11,002 steps); target < 0.5 s.

Reports medians with min-max.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from aexec import step
from aexec.canvas import chain, chord
from aexec.canvas import pipeline as canvas_pipeline


@step
def noop(*args: object, **kwargs: object) -> bool:
    return True


def canvas_1000_chords() -> int:
    """Build and compile the 1,000-chord chain; its number of steps."""
    workflow = chain(
        [
            noop.s(0),
            *(chord([noop.s(i) for i in range(10)], noop.s()) for _ in range(1000)),
            noop.s(),
        ]
    )
    return len(canvas_pipeline(workflow, name="canvas_1000_chords").compile().plan)


def measure(what: Callable[[], Any], repeat: int) -> dict[str, Any]:
    samples = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        size = what()
        samples.append(time.perf_counter() - t0)
    return {
        "seconds": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "size": size,
        "repetitions": repeat,
    }


TARGETS = {"canvas_1000_chords": 0.5}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dynamic")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", dest="json_file")
    args = parser.parse_args(argv)
    results = {"canvas_1000_chords": measure(canvas_1000_chords, args.repeat)}
    failed = False
    for name, row in results.items():
        target = TARGETS.get(name)
        ok = target is None or row["seconds"] < target
        failed |= not ok
        print(
            f"{name:24} {row['seconds']:.3f} s (min {row['min']:.3f}, max {row['max']:.3f}) "
            f"size {row['size']}"
            + ("" if target is None else f"  target < {target} s: {'met' if ok else 'MISSED'}")
        )
    if args.json_file:
        with open(args.json_file, "w") as out:
            json.dump({"results": results, "targets": TARGETS}, out, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
