"""celery-dyrygent: OVHcloud's orchestrator for the same Celery workers (issue 13).

The worker node, app and Redis backend are :class:`CelerySystem`'s (its app registers
dyrygent's ``workflow-processor`` task); each workload is the same canvas, handed to
``Workflow().add_celery_canvas(canvas)`` and applied as dyrygent's README shows.  Its
processor ticks on a 2-30 s retry countdown, which bounds how fast it can go.  It passes
no results from task to task, so the chords' body is ``noop`` here.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

from benchmarks.spec import Workload
from benchmarks.systems import Sample
from benchmarks.systems.celery_system import CelerySystem, _get
from benchmarks.systems.celery_workers import canvas_of


class DyrygentSystem(CelerySystem):
    name = "celery-dyrygent"

    @classmethod
    def unavailable(cls) -> str | None:
        if importlib.util.find_spec("celery_dyrygent") is None:
            return "celery-dyrygent is not installed (pip install -e '.[bench]')"
        return super().unavailable()

    def supports(self, workload: Workload) -> str | None:
        if workload.aexec_only:
            return "a comparison of two ways to write one shape in aexec"
        if workload.embedded or workload.runs > 1:
            return "one workflow at a time"
        return None

    def describe(self) -> dict[str, Any]:
        import celery_dyrygent  # noqa: F401

        return {**super().describe(), "orchestration": "celery-dyrygent workflow processor"}

    def _run_blocking(self, workload: Workload) -> Sample:
        from celery_dyrygent.workflows import Workflow

        t0 = time.perf_counter()
        workflow = Workflow()
        # dyrygent orders tasks but passes no results along: the chords' body takes none.
        n = workload.params.get("n", 0)
        canvas = canvas_of(self.app, workload.pipeline, n, join="bench.noop")
        workflow.add_celery_canvas(canvas)
        _get(workflow.apply_async(), self.config.timeout)
        return Sample(time.perf_counter() - t0)
