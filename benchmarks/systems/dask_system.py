"""Dask: a ``distributed.LocalCluster`` with one single-threaded worker process per core, each
workload submitted as futures with ``client.submit`` (dependencies passed as futures):

- ``independent_1000``, ``parallel_50``: ``client.map(noop, range(n))``
- ``chord_100``: ``total`` of 100 ``add`` futures
- chains of chords: each ``join`` takes the 10 futures of its layer
- ``many_runs``: 200 maps of 50 at once.

The embedded workload is the same chain as a task graph (a dict, Dask's "custom graphs")
run by the local threaded scheduler, with no cluster, each repetition in a fresh process of
its own (:mod:`benchmarks.isolated`, as aexec's embedded sample).  (``dask.delayed`` would be
the more common spelling, but building a chain of 1,000 chords with it is quadratic: 0.9 s
for 100 chords, 16.6 s for 400 here.)  The client API blocks, so each repetition runs in a thread.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import time
from typing import Any

from benchmarks import isolated
from benchmarks.cpu import trees
from benchmarks.spec import Workload
from benchmarks.systems import BenchConfig, Sample, System


def noop(*args: Any) -> bool:
    return True


def add(a: int, b: int) -> int:
    return a + b


def total(values: list[int]) -> int:
    return sum(values)


def join(results: list[bool]) -> bool:
    return all(results)


class DaskSystem(System):
    name = "dask"

    def __init__(self, config: BenchConfig) -> None:
        super().__init__(config)
        self.processes = os.cpu_count() or 1
        self.cluster: Any = None
        self.client: Any = None
        self._serial = 0

    @classmethod
    def unavailable(cls) -> str | None:
        if importlib.util.find_spec("distributed") is None:
            return "dask[distributed] is not installed (pip install -e '.[bench]')"
        return None

    def supports(self, workload: Workload) -> str | None:
        if workload.aexec_only:
            return "a comparison of two ways to write one shape in aexec"
        if workload.scale:
            return "the scale workloads compare aexec with the raw floor only"
        return None

    def describe(self) -> dict[str, Any]:
        import dask
        import distributed

        return {
            "version": dask.__version__,
            "distributed": distributed.__version__,
            "cluster": f"LocalCluster(n_workers={self.processes}, threads_per_worker=1)",
            "embedded": "a task graph dict run by dask.threaded.get",
        }

    def cpu_roles(self) -> dict[str, list[int]]:
        """The worker processes (their nannies and the scheduler live in this process)."""
        if self.cluster is None:
            return {}
        pids = [n.process.pid for n in self.cluster.workers.values() if n.process is not None]
        return {"workers": trees(p for p in pids if p is not None)}

    async def __aenter__(self) -> DaskSystem:
        await asyncio.to_thread(self._start)
        return self

    def _start(self) -> None:
        from distributed import Client, LocalCluster

        logging.getLogger("distributed").setLevel(logging.ERROR)  # its INFO chatter
        self.cluster = LocalCluster(
            n_workers=self.processes,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
            local_directory=str(self.config.workdir / "dask"),
        )
        self.client = Client(self.cluster)
        self.client.wait_for_workers(self.processes, timeout=60)

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        # Closing the cluster logs every connection it drops: not news.
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    async def recover(self) -> None:
        await asyncio.to_thread(self.client.restart)

    async def run(self, workload: Workload) -> Sample:
        if workload.embedded:
            self._serial += 1
            workdir = self.config.workdir / f"dask-embedded-{self._serial}"
            return await isolated.sample(self.config.python, self.name, workload, workdir)
        return await asyncio.to_thread(self._run_blocking, workload)

    def _run_blocking(self, workload: Workload) -> Sample:
        from distributed import wait

        client, timeout = self.client, self.config.timeout
        name, n = workload.pipeline, workload.params.get("n", 0)
        if workload.embedded:  # a process of its own, as aexec's embedded sample
            raise AssertionError("embedded samples run in benchmarks.isolated")
        t0 = time.perf_counter()
        if workload.runs > 1:
            maps = [client.map(noop, range(n), pure=False) for _ in range(workload.runs)]
            wait([f for futures in maps for f in futures], timeout=timeout)
            client.gather([f for futures in maps for f in futures])
        elif name == "roundtrip":
            assert client.submit(noop, pure=False).result(timeout=timeout) is True
        elif name == "independent":
            futures = client.map(noop, range(n), pure=False)
            wait(futures, timeout=timeout)
            client.gather(futures)
        elif name == "chord":
            adds = [client.submit(add, i, i, pure=False) for i in range(n)]
            value = client.submit(total, adds, pure=False).result(timeout=timeout)
            assert value == n * (n - 1), value
        elif name == "chain_of_chords":
            previous = client.submit(noop, pure=False)
            for _ in range(n):
                layer = [client.submit(noop, previous, pure=False) for _ in range(10)]
                previous = client.submit(join, layer, pure=False)
            end = client.submit(noop, previous, pure=False)
            assert end.result(timeout=timeout - (time.perf_counter() - t0)) is True
        else:
            raise ValueError(f"no Dask version of {workload.name}")
        return Sample(time.perf_counter() - t0)


def run_local_graph(n: int) -> Sample:
    from dask.threaded import get

    t0 = time.perf_counter()
    graph: dict[str, Any] = {"start": (noop,)}
    previous = "start"
    for i in range(n):
        layer = [f"c{i}_p{j}" for j in range(10)]
        for key in layer:
            graph[key] = (noop, previous)
        previous = graph_key = f"c{i}_join"
        graph[graph_key] = (join, layer)
    graph["end"] = (noop, previous)
    assert get(graph, "end") is True
    return Sample(time.perf_counter() - t0)
