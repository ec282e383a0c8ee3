"""aexec over RabbitMQ: worker subprocesses (``aexec worker start``) and, per workload, a
coordinator embedded in this process (``Executor.from_url``) with a fresh SQLite store.

``many_runs`` and the scale chain go through a long-lived ``aexec coordinator`` subprocess
instead (clients submit with ``Settings(remote=True)``), whose peak RSS is read from /proc.
The embedded workloads run ``Executor()`` with no broker at all, each repetition in a fresh
process of its own (:mod:`benchmarks.isolated`, as Dask's threaded sample), or in this
process when profiled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aexec.config import Settings
from aexec.dsl import Pipeline
from aexec.executor import Executor
from aexec.metrics import CoordinatorMetrics
from aexec.wire import SUBMIT_QUEUE, step_queue
from benchmarks import isolated, workloads
from benchmarks.broker import purge_queue, wait_for_consumers, with_query
from benchmarks.cpu import trees
from benchmarks.metrics import Scraper, free_port, in_process_registry
from benchmarks.procs import Child, peak_rss_bytes, reset_peak_rss, stop_all
from benchmarks.profiling import Profiler
from benchmarks.spec import Workload
from benchmarks.systems import ROOT, BenchConfig, Sample, System

WORKLOADS_FILE = "benchmarks/workloads.py"


def pipeline_of(workload: Workload) -> Pipeline:
    found = getattr(workloads, workload.pipeline)
    assert isinstance(found, Pipeline)
    return found


def expected_result(workload: Workload) -> Any:
    if workload.pipeline == "chord":
        n = workload.params["n"]
        return n * (n - 1)
    if workload.pipeline == "independent":
        return None
    return True


class AexecSystem(System):
    name = "aexec"

    def __init__(self, config: BenchConfig) -> None:
        super().__init__(config)
        self.prefix = f"{config.prefix}.aexec"
        self.url = with_query(config.broker, prefix=self.prefix)
        self.workers: list[Child] = []
        self._executor: Executor | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._coordinator: Child | None = None
        self._profiler: Profiler | None = None
        self._serial = 0
        self._scraped: list[int] = []  # the metrics ports scraped every second

    def describe(self) -> dict[str, Any]:
        return {
            "worker_processes": self.config.workers,
            "concurrency": self.config.concurrency,
            "coordinator": "in-process Executor.from_url (uvloop), SQLite store",
            "many_runs": "`aexec coordinator` subprocess, clients with Settings(remote=True)",
            "metrics": "served and scraped every second" if self.config.metrics else "off",
        }

    def _metrics_port(self) -> int:
        """A free port to serve /metrics on (scraped every second), or 0 (off)."""
        if not self.config.metrics:
            return 0
        port = free_port()
        self._scraped.append(port)
        return port

    # -- workers ---------------------------------------------------------------------------

    async def __aenter__(self) -> AexecSystem:
        for k in range(1, self.config.workers + 1):
            name = f"bench-w{k}"
            child = Child(
                f"aexec worker {name}",
                [
                    self.config.python,
                    "-m",
                    "aexec",
                    "worker",
                    "start",
                    "-A",
                    WORKLOADS_FILE,
                    "--broker",
                    self.url,
                    "-c",
                    str(self.config.concurrency),
                    "-n",
                    name,
                    "--metrics-port",
                    str(self._metrics_port()),
                    "-v",
                ],
                log_file=self.config.workdir / f"aexec-{name}.log",
                ready=f"worker {name} ready",
                cwd=str(ROOT),
            )
            self.workers.append(child)
        try:
            await asyncio.gather(*(w.start() for w in self.workers))
        except BaseException:
            await stop_all(self.workers)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.finish()
        finally:
            await stop_all(self.workers)

    def cpu_roles(self) -> dict[str, list[int]]:
        roles = {"workers": trees(w.pid for w in self.workers)}
        if self._coordinator is not None:
            roles["coordinator"] = [self._coordinator.pid]
        return roles

    # -- per workload ----------------------------------------------------------------------

    async def prepare(self, workload: Workload, *, warm_up: bool = False) -> None:
        self._serial += 1
        workdir = self.config.workdir / f"aexec-{self._serial}-{workload.name}"
        workdir.mkdir(parents=True)
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        self._stack = stack
        if self.config.profile_dir is not None and not warm_up:
            pids = [] if workload.embedded else [w.pid for w in self.workers]
            self._profiler = Profiler(
                self.config.profile_dir, f"aexec-{workload.name}", pids, self.config.profiler
            )
        if workload.embedded:
            if self._profiler is not None:
                await self._profiler.start()
            return
        if workload.through_coordinator:
            await self._start_coordinator(workdir)
            settings = Settings(
                broker=self.url, objects=_file_url(workdir / "client-objects"), remote=True
            )
        else:
            settings = Settings(
                broker=self.url,
                store=f"sqlite:///{workdir / 'aexec.db'}",
                objects=_file_url(workdir / "objects"),
            )
        metrics = CoordinatorMetrics() if self.config.metrics and workload.runs == 1 else None
        executor = Executor(settings, metrics=metrics)
        self._executor = await stack.enter_async_context(executor)
        if self.config.metrics:
            scrape = Scraper(self._scraped, _in_process(executor, metrics))
            await stack.enter_async_context(scrape)
        # Warm up: the first submission declares the coordinator's queues; not measured.
        run = await self._executor.submit(workloads.roundtrip)
        await run.result()
        if self._profiler is not None:
            await self._profiler.start()

    async def finish(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        try:
            if self._profiler is not None:
                await self._profiler.stop()
            if self._coordinator is not None:
                peak = self._coordinator.peak_rss_bytes()
                if peak is not None:
                    extra["coordinator_peak_rss_mb"] = round(peak / 2**20, 1)
            if self._stack is not None:
                await self._stack.aclose()
        finally:
            self._profiler = None
            self._executor = self._stack = None
            if self._coordinator is not None:
                await self._coordinator.stop()
                self._coordinator = None
        return extra

    async def recover(self) -> None:
        """Drop the step messages a timed-out run left queued."""
        await purge_queue(self.config.broker, f"{self.prefix}.{step_queue('default')}")

    async def _start_coordinator(self, workdir: Path) -> None:
        child = Child(
            "aexec coordinator",
            [
                self.config.python,
                "-m",
                "aexec",
                "coordinator",
                "--broker",
                self.url,
                "--store",
                f"sqlite:///{workdir / 'coordinator.db'}",
                "--objects",
                _file_url(workdir / "objects"),
                "--metrics-port",
                str(self._metrics_port()),
                "-v",
            ],
            log_file=self.config.workdir / "aexec-coordinator.log",
            ready=None,
            cwd=str(ROOT),
        )
        await child.start()
        self._coordinator = child
        try:
            await wait_for_consumers(self.config.broker, f"{self.prefix}.{SUBMIT_QUEUE}")
        except BaseException:
            await child.stop()
            self._coordinator = None
            raise

    # -- one repetition --------------------------------------------------------------------

    async def run(self, workload: Workload) -> Sample:
        pipeline = pipeline_of(workload)
        if workload.embedded:
            return await self._run_embedded(workload, pipeline)
        executor = self._executor
        assert executor is not None, "prepare() first"
        if workload.runs > 1:
            return await self._run_many(workload, pipeline, executor)
        with self._profiled():
            t0 = time.perf_counter()
            run = await executor.submit(pipeline, **workload.params)
            result = await run.result()
            seconds = time.perf_counter() - t0
        check(workload, result, len(run.plan))
        return Sample(seconds, self._coordinator_rss())

    def _coordinator_rss(self) -> dict[str, Any]:
        peak = self._coordinator.peak_rss_bytes() if self._coordinator is not None else None
        return {} if peak is None else {"coordinator_peak_rss_mb": round(peak / 2**20, 1)}

    async def _run_many(self, workload: Workload, pipeline: Pipeline, ex: Executor) -> Sample:
        compiled = pipeline.compile(**workload.params)
        t0 = time.perf_counter()
        runs = await asyncio.gather(*(ex.submit(compiled) for _ in range(workload.runs)))
        results = await asyncio.gather(*(run.result() for run in runs))
        seconds = time.perf_counter() - t0
        for result in results:
            check(workload, result, len(compiled.plan))
        return Sample(seconds, self._coordinator_rss())

    async def _run_embedded(self, workload: Workload, pipeline: Pipeline) -> Sample:
        self._serial += 1
        home = self.config.workdir / f"aexec-embedded-{self._serial}"
        if self._profiler is None:  # a process of its own, as Dask's threaded sample
            return await isolated.sample(self.config.python, self.name, workload, home)
        # Profiled: in this process, where the profiler is (its figures carry this
        # process's resident state: read them for where the time goes, not as a sample).
        reset_peak_rss(os.getpid())
        async with Executor(Settings(home=str(home))) as ex:
            with self._profiled():
                t0 = time.perf_counter()
                run = await ex.submit(pipeline, **workload.params)
                result = await run.result()
                seconds = time.perf_counter() - t0
        check(workload, result, len(run.plan))
        peak = peak_rss_bytes(os.getpid())
        extra = {} if peak is None else {"process_peak_rss_mb": round(peak / 2**20, 1)}
        return Sample(seconds, extra)

    @contextlib.contextmanager
    def _profiled(self) -> Iterator[None]:
        if self._profiler is None:
            yield
            return
        with self._profiler.coordinator():
            yield


def _in_process(executor: Executor, metrics: CoordinatorMetrics | None) -> Any:
    """The registry of the coordinator ``executor`` embeds (None without metrics)."""
    return None if metrics is None else in_process_registry(executor, metrics)


def check(workload: Workload, result: Any, steps: int) -> None:
    if workload.pipeline == "mapped":  # compiled to 3 steps; the map adds the others
        steps = steps - 3 + workload.steps_per_run
    if steps != workload.steps_per_run:
        raise AssertionError(f"{workload.name}: {steps} steps, expected {workload.steps_per_run}")
    expected = expected_result(workload)
    if result != expected:
        raise AssertionError(f"{workload.name}: result {result!r}, expected {expected!r}")


def _file_url(path: Path) -> str:
    return f"file://{path.absolute()}"
