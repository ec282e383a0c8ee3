"""One embedded sample in a fresh process of its own, for every system alike.

    python -m benchmarks.isolated SYSTEM WORKLOAD WORKDIR

An embedded workload runs everything in one process, so whatever else that process holds
weighs on the figure: the benchmark process also holds Dask's ``distributed`` client and
its IO thread (for the distributed workloads), aexec's broker connections, the other
systems' objects for the garbage collector to walk.  Measured in one process, a resident
``LocalCluster`` and ``Client`` alone took aexec's embedded chain from 0.95 to 1.59 s.
So each repetition of an embedded workload, aexec's and Dask's threaded one alike, runs in
a new ``python -m benchmarks.isolated`` process, started by :func:`sample`, which imports
only its own system, times the run inside itself exactly as the benchmark process did
(submit to result for aexec, graph build to result for Dask) and prints one JSON line:
the wall seconds, the process's CPU seconds over the same span, its peak RSS.
Process start-up and imports are outside the timed span, for both.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.spec import BY_NAME, Workload
from benchmarks.systems import ROOT, Sample


async def sample(python: str, system: str, workload: Workload, workdir: Path) -> Sample:
    """Run one repetition of the embedded ``workload`` for ``system`` in a new process."""
    process = await asyncio.create_subprocess_exec(
        python,
        "-m",
        "benchmarks.isolated",
        system,
        workload.name,
        str(workdir),
        cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await process.communicate()
    except BaseException:  # cancelled (the repetition's cap): do not leave it running
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    if process.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"isolated {system} sample exited {process.returncode}: {last[0]}")
    found = json.loads(out.decode().strip().splitlines()[-1])
    extra = dict(found["extra"])
    # The work ran in that process: its CPU over the timed span is the sample's CPU (the
    # benchmark's own processes, which the runner would meter, did nothing meanwhile).
    return Sample(float(found["seconds"]), extra, {"process": float(extra["process_cpu_s"])})


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # kB on Linux


async def _aexec(workload: Workload, workdir: Path) -> tuple[float, float]:
    from aexec.config import Settings
    from aexec.executor import Executor
    from benchmarks.systems.aexec_system import check, pipeline_of

    pipeline = pipeline_of(workload)
    async with Executor(Settings(home=str(workdir / "home"))) as ex:
        c0, t0 = _cpu(), time.perf_counter()
        run = await ex.submit(pipeline, **workload.params)
        result = await run.result()
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    check(workload, result, len(run.plan))
    return seconds, cpu


def _run_aexec(workload: Workload, workdir: Path) -> tuple[float, float]:
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_aexec(workload, workdir))


def _run_dask(workload: Workload) -> tuple[float, float]:
    import dask.threaded  # noqa: F401  (imported before the timed span, as aexec's modules)

    from benchmarks.systems.dask_system import run_local_graph

    c0 = _cpu()
    seconds = run_local_graph(workload.params.get("n", 0)).seconds
    return seconds, _cpu() - c0


def main(argv: list[str] | None = None) -> None:
    system, name, workdir = argv if argv is not None else sys.argv[1:]
    workload = BY_NAME[name]
    Path(workdir).mkdir(parents=True, exist_ok=True)
    if not workload.embedded:
        raise SystemExit(f"{name} is not an embedded workload")
    if system == "aexec":
        seconds, cpu = _run_aexec(workload, Path(workdir))
    elif system == "dask":
        seconds, cpu = _run_dask(workload)
    else:
        raise SystemExit(f"no isolated embedded sample for {system}")
    extra = {"process_cpu_s": round(cpu, 4), "process_peak_rss_mb": _peak_rss_mb()}
    print(json.dumps({"seconds": seconds, "extra": extra}))


if __name__ == "__main__":
    main()
