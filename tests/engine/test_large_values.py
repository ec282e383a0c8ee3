"""Large values on the in-memory adapters: the size limits are explicit and consistent.

A step's output over ``max_value_size`` fails that step, naming the size and the limit;
values over the message cap but within ``max_value_size`` load from the object store;
and no message the coordinator publishes is over the cap: a fan-in whose inline inputs
would exceed it has its largest inputs moved to the object store, or fails with a clear
error when that cannot be done.  Tests that are about the cap lower it (a
``CoordinatorConfig`` knob) so that they move kilobytes rather than 64 MiB.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import aexec.testing
from aexec import codec, messages, pipeline, step
from aexec.config import MAX_MESSAGE_SIZE
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.dsl import CompiledPipeline
from aexec.errors import ObjectStoreError
from aexec.events import Event, from_record
from aexec.objects.memory import MemoryObjectStore
from aexec.run import RemoteRun
from aexec.store.memory import MemoryStore
from aexec.transport import Delivery
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus, StepStatus
from aexec.worker import Worker

WAIT = 30.0
CAP = 200_000  # the message cap these tests give the coordinator
MiB = 1024 * 1024


@step
async def chunk(i: int, size: int) -> bytes:
    return bytes([i % 256]) * size


@step
async def total(parts: list[bytes]) -> int:
    return sum(len(p) for p in parts)


@pipeline
def fan_in(n: int, size: int) -> object:
    return total([chunk.alias(f"c{i}")(i, size) for i in range(n)])


@pipeline
def fan_out(n: int, size: int) -> object:
    return [chunk.alias(f"c{i}")(i, size) for i in range(n)]


class SizedTransport(MemoryTransport):
    """The memory broker, noting the size of every body published to a step queue."""

    def __init__(self) -> None:
        super().__init__()
        self.step_bodies: list[int] = []

    async def publish_many(self, messages: Any) -> None:
        self.step_bodies += [
            len(body if isinstance(body, bytes) else body.encode())  # or handed as an object
            for queue, body, _ in messages
            if queue.startswith("step.")
        ]
        await super().publish_many(messages)


@pytest.fixture
async def transport() -> AsyncIterator[SizedTransport]:
    t = SizedTransport()
    await t.open()
    yield t
    await t.close()


async def drive(
    transport: MemoryTransport,
    store: MemoryStore,
    compiled: CompiledPipeline,
    objects: MemoryObjectStore | None,
    *,
    notify: str | None = None,
) -> tuple[Coordinator, str, RunStatus]:
    config = CoordinatorConfig(max_message_size=CAP)
    async with (
        Coordinator(transport, store, config, objects=objects) as coordinator,
        Worker(transport, objects or MemoryObjectStore(), compiled.steps) as worker,
    ):
        await worker.serve("default")
        run = await coordinator.submit(compiled.plan, notify=notify)
        status = await asyncio.wait_for(run.done, WAIT)
    return coordinator, run.run_id, status


async def test_a_step_returning_more_than_the_value_limit_fails_once_naming_size_and_limit() -> (
    None
):
    @step(retries=3)
    async def huge() -> bytes:
        return b"x" * 300_000

    @pipeline
    def p() -> object:
        return total([huge()])

    async with aexec.testing.executor(max_value_size=200_000, inline_threshold=1024) as ex:
        run = await ex.submit(p)
        record = await run.wait()
        steps = {s.key: s for s in await run.steps()}
    assert record.status is RunStatus.FAILED
    error = steps["huge"].error
    assert error is not None and error.type == "ValueTooLargeError"
    assert "300005 bytes" in error.message and "200000-byte limit" in error.message
    assert "AEXEC_MAX_VALUE_SIZE" in error.message
    assert (steps["huge"].attempts, steps["total"].status) == (1, StepStatus.SKIPPED)


async def test_values_over_the_message_cap_load_from_the_object_store() -> None:
    size = MAX_MESSAGE_SIZE + MiB  # more than any message may carry

    @pipeline
    def p() -> object:
        big = chunk(7, size)
        return [total([big]), big]

    async with aexec.testing.executor() as ex:
        run = await ex.submit(p)
        length, value = await run.result()
    assert length == size
    assert len(value) == size and value[:1] == b"\x07"


async def test_a_fan_in_too_large_for_a_message_takes_its_largest_inputs_from_the_object_store(
    transport: SizedTransport, store: MemoryStore
) -> None:
    compiled = fan_in.compile(n=40, size=10_000)  # 400 kB of inline inputs, a 200 kB cap
    objects = MemoryObjectStore()
    _, run_id, status = await drive(transport, store, compiled, objects)
    assert status is RunStatus.SUCCEEDED
    run = await store.get_run(run_id)
    assert run is not None and codec.decode(run.result or b"") == 400_000
    assert max(transport.step_bodies) <= CAP
    assert transport.step_bodies[-1] > CAP // 2  # the fan-in's message was filled, not emptied
    moved = [key for key in objects._objects if key.startswith(f"outputs/{run_id}/")]
    assert 20 <= len(moved) < 40  # enough to fit, not all
    assert all(key.endswith("/1") for key in moved)  # where each step's output would be
    assert await transport.dead_letters() == []


async def test_a_fan_in_too_large_for_a_message_fails_without_an_object_store(
    transport: SizedTransport, store: MemoryStore
) -> None:
    compiled = fan_in.compile(n=40, size=10_000)
    _, run_id, status = await drive(transport, store, compiled, None)
    assert status is RunStatus.FAILED
    steps = {s.key: s for s in await store.get_steps(run_id)}
    error = steps["total"].error
    assert error is not None and error.type == "ValueTooLargeError"
    assert "no object store" in error.message
    assert max(transport.step_bodies) <= CAP


async def test_a_step_whose_call_alone_is_too_large_fails_with_a_clear_error(
    transport: SizedTransport, store: MemoryStore
) -> None:
    @pipeline
    def p() -> object:
        return total([b"constant" * 40_000])  # 320 kB baked into the call

    _, run_id, status = await drive(transport, store, p.compile(), MemoryObjectStore())
    assert status is RunStatus.FAILED
    [record] = await store.get_steps(run_id)
    assert record.error is not None and record.error.type == "ValueTooLargeError"
    assert "bytes of constants" in record.error.message
    assert transport.step_bodies == []  # nothing too large was ever published


class FailingObjects(MemoryObjectStore):
    async def put(self, key: str, data: bytes) -> None:
        raise ObjectStoreError(f"disk full writing {key}")


async def test_a_fan_in_whose_inputs_cannot_be_stored_fails_as_retryable(
    transport: SizedTransport, store: MemoryStore
) -> None:
    compiled = fan_in.compile(n=40, size=10_000)
    _, run_id, status = await drive(transport, store, compiled, FailingObjects())
    assert status is RunStatus.FAILED  # no retries configured: the one attempt failed
    steps = {s.key: s for s in await store.get_steps(run_id)}
    error = steps["total"].error
    assert error is not None and error.type == "ObjectStoreError" and error.retryable
    assert "disk full" in error.message


async def test_a_result_too_large_for_a_message_reaches_a_remote_client_by_reference(
    transport: SizedTransport, store: MemoryStore
) -> None:
    compiled = fan_out.compile(n=40, size=10_000)  # a 400 kB result, a 200 kB cap
    objects = MemoryObjectStore()
    remote = RemoteRun("pending", compiled.plan, 0, objects=objects, cancel=_no_cancel)
    sizes: list[int] = []
    received: list[Event] = []
    ended = asyncio.Event()

    async def client(delivery: Delivery) -> None:
        await delivery.ack()
        sizes.append(len(delivery.body))
        msg = messages.decode(delivery.body)
        assert isinstance(msg, messages.Events)
        received.extend(from_record(msg.run_id, r) for r in msg.records)
        if received[-1].kind.ends_run:
            ended.set()

    await transport.declare_queue("client.x", max_priority=0)
    await transport.consume("client.x", client, prefetch=10)
    _, run_id, status = await drive(transport, store, compiled, objects, notify="client.x")
    assert status is RunStatus.SUCCEEDED
    await asyncio.wait_for(ended.wait(), WAIT)
    remote.run_id = run_id
    remote.receive(received)
    assert max(sizes) <= CAP
    assert await remote.result() == [bytes([i]) * 10_000 for i in range(40)]


async def _no_cancel(run_id: str) -> None:
    return None
