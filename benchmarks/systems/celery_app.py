"""The Celery application of the benchmark: four tasks, as aexec's workloads have four steps.

The worker subprocess loads it with ``celery -A benchmarks.systems.celery_app worker`` and
reads its settings from the environment (``BENCH_CELERY_*``); the benchmark process builds
the same app with :func:`make_app`.  Every broker entity is named ``<prefix>.celery*`` and
every Redis key starts with ``<prefix>:``, so a benchmark run cleans up exactly its own.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_BACKEND = "redis://127.0.0.1:6379/0"


def make_app(broker: str, backend: str, prefix: str, prefetch_multiplier: int) -> Celery:
    app = Celery("bench", broker=broker, backend=backend)
    queue = f"{prefix}.celery"
    app.conf.update(
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        event_exchange=f"{prefix}.celeryev",
        result_backend_transport_options={"global_keyprefix": f"{prefix}:"},
        result_expires=3600,
        worker_prefetch_multiplier=prefetch_multiplier,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name="bench.noop", shared=False)
    def noop(*args: Any) -> bool:
        return True

    @app.task(name="bench.add", shared=False)
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="bench.total", shared=False)
    def total(values: list[int]) -> int:
        return sum(values)

    @app.task(name="bench.join", shared=False)
    def join(results: list[bool]) -> bool:
        return all(results)

    try:  # celery-dyrygent's workflow processor, where it is installed (the bench extra)
        from celery_dyrygent.tasks import register_workflow_processor
    except ImportError:
        pass
    else:
        register_workflow_processor(app, shared=False)
    return app


app = make_app(
    os.environ.get("BENCH_CELERY_BROKER", DEFAULT_BROKER),
    os.environ.get("BENCH_CELERY_BACKEND", DEFAULT_BACKEND),
    os.environ.get("BENCH_CELERY_PREFIX", "bench"),
    int(os.environ.get("BENCH_CELERY_PREFETCH_MULTIPLIER", "4")),
)
