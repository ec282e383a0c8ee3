"""Celery: one worker node (prefork pool sized to the cores) on the same RabbitMQ, Redis as
the result backend, each workload written with canvas the way Celery users write it:

- ``roundtrip``: ``noop.delay().get()``
- ``independent_1000``, ``parallel_50``: ``group(noop.s() x n)``
- ``chord_100``: ``chord([add.s(i, i) ...], total.s())``
- chains of chords: ``chain(noop.s(), chord([noop.s() x 10], join.s()) x n, noop.s())``
- ``many_runs``: 200 groups of 50 applied at once, then every result awaited.

The client API blocks, so each repetition runs in a thread; ``.get(timeout=...)`` caps it.
A repetition that times out or fails is recorded as such; the worker is then restarted and
its queue purged so that the next workload starts clean.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import time
from typing import Any
from urllib.parse import urlsplit

from benchmarks.broker import plain_url, purge_queue
from benchmarks.cpu import trees
from benchmarks.machine import redis_version
from benchmarks.procs import Child
from benchmarks.spec import Workload
from benchmarks.systems import ROOT, BenchConfig, Sample, System


class CeleryTimeout(TimeoutError):
    pass


class CelerySystem(System):
    name = "celery"

    def __init__(self, config: BenchConfig) -> None:
        super().__init__(config)
        self.prefix = config.prefix
        self.queue = f"{config.prefix}.celery"
        self.pool = os.cpu_count() or 1
        # The same prefetch per pool process as aexec's per worker process.
        self.prefetch_multiplier = config.concurrency
        self.broker = _kombu_url(config.broker)
        self.worker: Child | None = None
        self.app: Any = None

    @classmethod
    def unavailable(cls) -> str | None:
        for module in ("celery", "redis"):
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed (pip install -e '.[bench]')"
        return None

    def supports(self, workload: Workload) -> str | None:
        if workload.aexec_only:
            return "a comparison of two ways to write one shape in aexec"
        if workload.scale:
            return "the scale workloads compare aexec with the raw floor only"
        if workload.embedded:
            return "Celery has no embedded mode (task_always_eager is not a runtime)"
        return None

    def describe(self) -> dict[str, Any]:
        import celery

        return {
            "version": celery.__version__,
            "pool": f"prefork -c {self.pool}",
            "prefetch_multiplier": self.prefetch_multiplier,
            "result_backend": "redis",
            "serializer": "json (default)",
        }

    def cpu_roles(self) -> dict[str, list[int]]:
        return {"workers": trees([self.worker.pid]) if self.worker is not None else []}

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "BENCH_CELERY_BROKER": self.broker,
            "BENCH_CELERY_BACKEND": self.config.redis,
            "BENCH_CELERY_PREFIX": self.prefix,
            "BENCH_CELERY_PREFETCH_MULTIPLIER": str(self.prefetch_multiplier),
        }

    async def _start_worker(self) -> None:
        self.worker = Child(
            "celery worker",
            [
                self.config.python,
                "-m",
                "celery",
                "-A",
                "benchmarks.systems.celery_app",
                "worker",
                "--pool",
                "prefork",
                "-c",
                str(self.pool),
                "-n",
                f"{self.prefix}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "INFO",
            ],
            log_file=self.config.workdir / "celery-worker.log",
            ready=" ready.",
            env=self._env(),
            cwd=str(ROOT),
        )
        await self.worker.start()

    async def __aenter__(self) -> CelerySystem:
        from benchmarks.systems.celery_app import make_app

        if await asyncio.to_thread(redis_version, self.config.redis) is None:
            raise RuntimeError(f"Redis is not reachable at {self.config.redis}")

        self.app = make_app(self.broker, self.config.redis, self.prefix, self.prefetch_multiplier)
        await self._start_worker()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self.worker is not None:
                await self.worker.stop()
                self.worker = None
        finally:
            if self.app is not None:
                await asyncio.to_thread(self.app.close)
            await self._delete_redis_keys()

    async def recover(self) -> None:
        if self.worker is not None:
            await self.worker.stop(grace=5.0)
        await purge_queue(self.config.broker, self.queue)
        await self._start_worker()

    async def _delete_redis_keys(self) -> None:
        def delete() -> None:
            import redis

            client = redis.Redis.from_url(self.config.redis)
            try:
                keys = list(client.scan_iter(match=f"{self.prefix}:*", count=1000))
                for i in range(0, len(keys), 500):
                    client.delete(*keys[i : i + 500])
            finally:
                client.close()

        await asyncio.to_thread(delete)

    async def run(self, workload: Workload) -> Sample:
        return await asyncio.to_thread(self._run_blocking, workload)

    def _run_blocking(self, workload: Workload) -> Sample:
        from celery import chain, chord, group

        app, timeout = self.app, self.config.timeout
        noop, add = app.tasks["bench.noop"], app.tasks["bench.add"]
        total, join = app.tasks["bench.total"], app.tasks["bench.join"]
        name, n = workload.pipeline, workload.params.get("n", 0)
        t0 = time.perf_counter()
        if workload.runs > 1:
            results = [
                group(noop.s() for _ in range(n)).apply_async() for _ in range(workload.runs)
            ]
            for result in results:
                _get(result, timeout - (time.perf_counter() - t0))
        elif name == "roundtrip":
            _get(noop.delay(), timeout)
        elif name == "independent":
            _get(group(noop.s() for _ in range(n)).apply_async(), timeout)
        elif name == "chord":
            value = _get(chord(add.s(i, i) for i in range(n))(total.s()), timeout)
            assert value == n * (n - 1), value
        elif name == "chain_of_chords":
            canvas = chain(
                noop.s(),
                *(chord([noop.s() for _ in range(10)], join.s()) for _ in range(n)),
                noop.s(),
            )
            assert _get(canvas.apply_async(), timeout) is True
        else:
            raise ValueError(f"no Celery version of {workload.name}")
        return Sample(time.perf_counter() - t0)


def _kombu_url(url: str) -> str:
    """kombu spells the default vhost ``//``; aio-pika spells it ``/``."""
    plain = plain_url(url)
    return plain.rstrip("/") + "//" if urlsplit(plain).path in ("", "/") else plain


def _get(result: Any, timeout: float) -> Any:
    from celery.exceptions import TimeoutError as CeleryTimeoutError

    try:
        return result.get(timeout=max(timeout, 0.001), propagate=True)
    except CeleryTimeoutError:
        raise CeleryTimeout(f"no result within {timeout:g} s") from None
