"""celery-floor: the Celery worker node's own floor, with no orchestrator at all (issue 13).

The same worker node as the Celery columns (:class:`CelerySystem`: its app, prefork pool,
prefetch and Redis result backend), driven as the raw aio-pika floor drives its workers:
the workload's waves in turn, each wave's ``bench.noop`` task messages published at once
straight onto the node's queue (protocol v2 built by :mod:`aexec.celery.protocol`, one
confirmed aio-pika publish each), the next wave as soon as the node stored every result of
the one before (heard on their Redis channels).  No orchestrator can run the workload on
this node faster: what is left between this column and ``celery-workers`` is aexec's own
work; what separates it from the raw floor is the Celery worker itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import aio_pika
from pamqp.commands import Basic

from aexec.celery import protocol
from benchmarks.broker import plain_url
from benchmarks.spec import Workload
from benchmarks.systems import Sample
from benchmarks.systems.celery_system import CelerySystem


class CeleryFloorSystem(CelerySystem):
    name = "celery-floor"

    def supports(self, workload: Workload) -> str | None:
        if workload.embedded or workload.runs > 1:
            return "the floor runs one batch of independent tasks"
        return super().supports(workload)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "orchestration": "none: every task published at once, no dependencies",
        }

    async def run(self, workload: Workload) -> Sample:
        import redis.asyncio

        batch = f"floor.{uuid.uuid4().hex[:12]}"
        keys = f"{self.prefix}:celery-task-meta-"
        client = redis.asyncio.Redis.from_url(self.config.redis)
        pubsub = client.pubsub()
        connection = await aio_pika.connect(plain_url(self.config.broker))
        try:
            await pubsub.psubscribe(f"{keys}{batch}.*")
            results = pubsub.listen()
            channel = await connection.channel(publisher_confirms=True)
            underlay = await channel.get_underlay_channel()
            waves, n = [], 0
            for size in workload.waves:
                waves.append([_message(f"{batch}.{n + i}") for i in range(size)])
                n += size
            t0 = time.perf_counter()
            async with asyncio.timeout(self.config.timeout):
                for wave in waves:
                    await asyncio.gather(
                        *(
                            underlay.basic_publish(m.body, routing_key=self.queue, properties=p)
                            for m, p in wave
                        )
                    )
                    await _results(results, len(wave))
            seconds = time.perf_counter() - t0
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()
            await connection.close()
        return Sample(seconds)


def _message(tid: str) -> tuple[protocol.TaskMessage, Basic.Properties]:
    m = protocol.task_message("bench.noop", tid, [], {}, protocol.TaskOptions())
    properties = Basic.Properties(
        content_type=m.content_type,
        content_encoding="utf-8",
        correlation_id=m.task_id,
        delivery_mode=2,
        headers=m.headers,
    )
    return m, properties


async def _results(results: Any, n: int) -> None:
    """Until ``n`` more results were published on the subscribed channels."""
    seen = 0
    while seen < n:
        message = await anext(results)
        if message.get("type") == "pmessage":
            seen += 1
