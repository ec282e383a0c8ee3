"""celery-floor: the Celery worker node's own ceiling, with no orchestrator at all (issue 13).

The same worker node as the Celery columns (:class:`CelerySystem`: its app, prefork pool,
prefetch and Redis result backend).  Each repetition publishes as many ``bench.noop`` task
messages as the workload has steps, all at once and with no dependency between them,
straight onto the node's queue (protocol v2 built by :mod:`aexec.celery.protocol`, one
confirmed aio-pika publish each), and ends when the node has stored every result (heard on
their Redis channels).  No orchestrator can run the workload's tasks on this node faster:
what is left between this column and ``celery-workers`` is the orchestration (the
dependencies' round trips and aexec's own work); what separates it from the raw aio-pika
floor is the Celery worker itself.
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

        n = workload.steps_per_run
        batch = f"floor.{uuid.uuid4().hex[:12]}"
        keys = f"{self.prefix}:celery-task-meta-"
        client = redis.asyncio.Redis.from_url(self.config.redis)
        pubsub = client.pubsub()
        connection = await aio_pika.connect(plain_url(self.config.broker))
        try:
            await pubsub.psubscribe(f"{keys}{batch}.*")
            channel = await connection.channel(publisher_confirms=True)
            underlay = await channel.get_underlay_channel()
            messages = [
                protocol.task_message("bench.noop", f"{batch}.{i}", [], {}, protocol.TaskOptions())
                for i in range(n)
            ]
            t0 = time.perf_counter()
            heard = asyncio.ensure_future(_count(pubsub, n))
            await asyncio.gather(
                *(
                    underlay.basic_publish(
                        m.body,
                        routing_key=self.queue,
                        properties=Basic.Properties(
                            content_type=m.content_type,
                            content_encoding="utf-8",
                            correlation_id=m.task_id,
                            delivery_mode=2,
                            headers=m.headers,
                        ),
                    )
                    for m in messages
                )
            )
            published = time.perf_counter() - t0
            await asyncio.wait_for(heard, self.config.timeout)
            seconds = time.perf_counter() - t0
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()
            await connection.close()
        return Sample(seconds, extra={"published_seconds": round(published, 4)})


async def _count(pubsub: Any, n: int) -> None:
    """Until ``n`` results were published on the subscribed channels."""
    seen = 0
    async for message in pubsub.listen():
        if message.get("type") == "pmessage":
            seen += 1
            if seen >= n:
                return
