"""Embedded-mode benchmarks: no broker, the SQLite store, files for large outputs.

    python -m benchmarks.embedded [--n 1000] [--repeat 5] [--json FILE]

Measures, for the chain of chords (noop, n x [10 parallel -> 1], noop; n=1000: 11,002
steps): compile time, run time inside the process (store included), and the whole
`python -m aexec run examples/chords.py -p n=N` process, its wall time and its CPU time
(user + system: the figure a loaded machine disturbs least), as this environment runs it
and with Python's bytecode cache written (``PYTHONDONTWRITEBYTECODE`` unset, the cache in a
temporary ``PYTHONPYCACHEPREFIX``, after one warm-up run), as an installed package runs: a
process otherwise compiles every aexec module from source.  Reports medians with min-max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


async def _in_process(n: int, home: str) -> tuple[float, float, int]:
    sys.path.insert(0, str(ROOT / "examples"))
    from chords import chain_of_chords  # type: ignore[import-not-found]

    from aexec.config import Settings
    from aexec.executor import Executor

    settings = Settings(home=home)
    async with Executor(settings) as ex:
        t0 = time.perf_counter()
        compiled = chain_of_chords.compile(n=n)
        t1 = time.perf_counter()
        run = await ex.submit(compiled)
        assert await run.result() is True
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1, len(compiled.plan)


def _process(n: int, home: str, pycache: str | None = None) -> tuple[float, float]:
    """Wall and CPU seconds of one ``aexec run`` process; with ``pycache``, bytecode is
    cached there (written by the first process, read by the next ones)."""
    env = {**os.environ, "AEXEC_HOME": home}
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "aexec",
            "run",
            str(ROOT / "examples" / "chords.py"),
            "-p",
            f"n={n}",
        ],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.embedded")
    parser.add_argument("--n", type=int, default=1000, help="chords in the chain")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", dest="json_file")
    args = parser.parse_args(argv)
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = None
    compile_s, run_s = [], []
    process: list[tuple[float, float]] = []
    cached: list[tuple[float, float]] = []
    steps = 0
    with tempfile.TemporaryDirectory() as pycache:
        with tempfile.TemporaryDirectory() as home:
            _process(args.n, home, pycache)  # writes the bytecode cache
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as home:
                with asyncio.Runner(loop_factory=loop_factory) as runner:
                    c, r, steps = runner.run(_in_process(args.n, home))
                compile_s.append(c)
                run_s.append(r)
            with tempfile.TemporaryDirectory() as home:
                process.append(_process(args.n, home))
            with tempfile.TemporaryDirectory() as home:
                cached.append(_process(args.n, home, pycache))
    rows = {
        "compile": _summary(compile_s),
        "run (in process, SQLite store)": _summary(run_s),
        "compile + run": _summary([c + r for c, r in zip(compile_s, run_s, strict=True)]),
        "whole `aexec run` process": _summary([wall for wall, _ in process]),
        "  its CPU (user + system)": _summary([cpu for _, cpu in process]),
        "  with bytecode cached": _summary([wall for wall, _ in cached]),
        "  its CPU, bytecode cached": _summary([cpu for _, cpu in cached]),
    }
    print(f"embedded chain of chords: n={args.n}, {steps} steps, {args.repeat} repetitions")
    for name, s in rows.items():
        print(f"  {name:32s} {s['median']:7.3f} s   ({s['min']:.3f}-{s['max']:.3f})")
    per_second = steps / rows["run (in process, SQLite store)"]["median"]
    print(f"  {'steps per second (run)':32s} {per_second:7.0f}")
    if args.json_file:
        Path(args.json_file).write_text(
            json.dumps({"steps": steps, "n": args.n, "results": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
