"""A traced run over RabbitMQ, in a process of its own (a tracer provider is global).

    python -m tests.integration.otel.traced_run AMQP_URL PREFIX WORKDIR

The coordinator (an ``Executor`` over RabbitMQ) and a worker (its own connection) run in
this process, their spans collected by the SDK's in-memory exporter; step messages cross
RabbitMQ between them.  Prints the finished spans as one JSON list.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import aexec
from aexec import pipeline, step
from aexec.config import Settings
from aexec.executor import Executor
from aexec.objects.fs import FileObjectStore
from aexec.transport import from_url
from aexec.worker import Worker, WorkerConfig

tracer = trace.get_tracer("user-code")


@step(queue="traced")
async def fetch(n: int) -> int:
    with tracer.start_as_current_span("fetch rows"):
        await asyncio.sleep(0)
    return n


@step(queue="traced")
def crunch(n: int) -> int:  # a sync step: in a thread
    with tracer.start_as_current_span("crunch numbers"):
        return n * 2


@step(queue="traced")
def broken(n: int) -> int:
    raise ValueError(f"broken {n}")


@pipeline
def traced() -> object:
    return crunch(fetch(3))


@pipeline
def failing() -> object:
    return broken(1)


def as_dict(span: Any) -> dict[str, Any]:
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent_id": None if parent is None else f"{parent.span_id:016x}",
        "kind": span.kind.name,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [event.name for event in span.events],
    }


async def main(url: str, prefix: str, workdir: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    settings = Settings(
        broker=url,
        store=f"sqlite:///{workdir}/runs.db",
        objects=f"file://{workdir}/objects",
        queue_prefix=prefix,
    )
    transport = from_url(url, prefix=prefix)
    await transport.open()
    objects = FileObjectStore(f"{workdir}/objects")
    await objects.open()
    steps = {s.name: s for s in (fetch, crunch, broken)}
    try:
        async with (
            Executor(settings) as ex,
            Worker(transport, objects, steps, WorkerConfig(name="traced-worker")) as worker,
        ):
            await worker.serve("traced")
            run = await ex.submit(traced)
            assert await run.result() == 6
            failed = await ex.submit(failing)
            with contextlib.suppress(aexec.RunFailedError):
                await failed.result()
    finally:
        await objects.close()
        await transport.close()
    print(
        json.dumps(
            {
                "ok": run.run_id,
                "failed": failed.run_id,
                "spans": [as_dict(s) for s in exporter.get_finished_spans()],
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
