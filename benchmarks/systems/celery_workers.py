"""celery-workers: aexec's coordinator driving the same Celery workers the Celery column
uses (issue 13).

The Celery worker node, its app and its Redis result backend are :class:`CelerySystem`'s;
each workload is the same canvas Celery runs, turned into a pipeline with
``aexec.celery.from_canvas`` and submitted to an embedded aexec (a coordinator in this
process, a fresh SQLite store per workload) whose Celery gateway sends the tasks and hears
their results on Redis.  Building the canvas and converting it is inside the timing, as
building it is inside Celery's.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from aexec.celery import from_canvas
from aexec.config import Settings
from aexec.executor import Executor
from benchmarks.spec import Workload
from benchmarks.systems import Sample
from benchmarks.systems.celery_system import CelerySystem


class CeleryWorkersSystem(CelerySystem):
    name = "celery-workers"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._executor: Executor | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._serial = 0

    def supports(self, workload: Workload) -> str | None:
        if workload.aexec_only:
            return "a comparison of two ways to write one shape in aexec"
        if workload.embedded:
            return "Celery workers are separate processes"
        if workload.runs > 1:
            return "one coordinator drives one run at a time here"
        return None

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "orchestration": "aexec coordinator in-process (embedded Executor, SQLite store)",
            "result_backend": "redis (the Celery column's workers and backend)",
        }

    async def prepare(self, workload: Workload, *, warm_up: bool = False) -> None:
        self._serial += 1
        workdir = self.config.workdir / f"celery-workers-{self._serial}-{workload.name}"
        workdir.mkdir(parents=True)
        settings = Settings(
            home=str(workdir),
            # The worker node's events go to <prefix>.celeryev (its app says so).
            celery_broker=f"{self.broker}?event_exchange={self.prefix}.celeryev",
            celery_backend=f"{self.config.redis}?global_keyprefix={self.prefix}:",
            queue_prefix=f"{self.prefix}.aexec-celery",
        )
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        self._stack = stack
        self._executor = await stack.enter_async_context(Executor(settings))
        # Warm up: the first submission opens the gateway; not measured.
        await self._submit(canvas_of(self.app, "roundtrip", 0))

    async def finish(self) -> dict[str, Any]:
        stack, self._stack, self._executor = self._stack, None, None
        if stack is not None:
            await stack.aclose()
        return {}

    async def run(self, workload: Workload) -> Sample:
        t0 = time.perf_counter()
        n = workload.params.get("n", 0)
        value = await self._submit(canvas_of(self.app, workload.pipeline, n))
        if workload.pipeline == "chord":
            assert value == n * (n - 1), value
        elif workload.pipeline == "chain_of_chords":
            assert value is True, value
        return Sample(time.perf_counter() - t0)

    async def _submit(self, canvas: Any) -> Any:
        assert self._executor is not None
        run = await self._executor.submit(from_canvas(canvas, name="bench", queue=self.queue))
        return await run.result()


def canvas_of(app: Any, name: str, n: int, *, join: str = "bench.join") -> Any:
    """Workload ``name`` as a Celery user writes it (as :class:`CelerySystem` does);
    ``join`` names the chords' body task."""
    from celery import chain, chord, group

    noop, add = app.tasks["bench.noop"], app.tasks["bench.add"]
    total, body = app.tasks["bench.total"], app.tasks[join]
    if name == "roundtrip":
        return noop.s()
    if name == "independent":
        return group(noop.s() for _ in range(n))
    if name == "chord":
        return chord([add.s(i, i) for i in range(n)], total.s())
    if name == "chain_of_chords":
        return chain(
            noop.s(),
            *(chord([noop.s() for _ in range(10)], body.s()) for _ in range(n)),
            noop.s(),
        )
    raise ValueError(f"no Celery canvas for {name}")
