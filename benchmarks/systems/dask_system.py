"""Dask: a ``distributed.LocalCluster`` with one single-threaded worker process per core, each
workload submitted as futures with ``client.submit`` (dependencies passed as futures):

- ``independent_1000``, ``parallel_50``: ``client.map(noop, range(n))``
- ``chord_100``: ``total`` of 100 ``add`` futures
- chains of chords: each ``join`` takes the 10 futures of its layer
- ``many_runs``: 200 maps of 50 at once.

The embedded workload is the same chain as ``dask.delayed`` computed by the local threaded
scheduler, with no cluster: what a Dask user runs in one process.  The client API blocks, so
each repetition runs in a thread.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import time
from typing import Any

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

    @classmethod
    def unavailable(cls) -> str | None:
        if importlib.util.find_spec("distributed") is None:
            return "dask[distributed] is not installed (pip install -e '.[bench]')"
        return None

    def describe(self) -> dict[str, Any]:
        import dask
        import distributed

        return {
            "version": dask.__version__,
            "distributed": distributed.__version__,
            "cluster": f"LocalCluster(n_workers={self.processes}, threads_per_worker=1)",
            "embedded": "dask.delayed, scheduler='threads'",
        }

    async def __aenter__(self) -> DaskSystem:
        await asyncio.to_thread(self._start)
        return self

    def _start(self) -> None:
        from distributed import Client, LocalCluster

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
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    async def recover(self) -> None:
        await asyncio.to_thread(self.client.restart)

    async def run(self, workload: Workload) -> Sample:
        return await asyncio.to_thread(self._run_blocking, workload)

    def _run_blocking(self, workload: Workload) -> Sample:
        from distributed import wait

        client, timeout = self.client, self.config.timeout
        name, n = workload.pipeline, workload.params.get("n", 0)
        if workload.embedded:
            return _run_delayed(n)
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


def _run_delayed(n: int) -> Sample:
    import dask

    t0 = time.perf_counter()
    previous = dask.delayed(noop)()
    for _ in range(n):
        layer = [dask.delayed(noop)(previous) for _ in range(10)]
        previous = dask.delayed(join)(layer)
    (result,) = dask.compute(dask.delayed(noop)(previous), scheduler="threads")
    assert result is True
    return Sample(time.perf_counter() - t0)
