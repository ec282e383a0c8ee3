"""``raw-aio-pika``, the floor: the same number of no-op request/reply messages as a
workload has steps, through plain aio-pika worker processes (``raw_worker.py``), with no
executor around them.

Same broker, same topology kind (durable classic queues with ``x-max-priority``, persistent
messages), msgpack bodies shaped like aexec's step and completion messages, publisher
confirms on both sides, the same prefetch per worker, and the same dependency shape: a run
publishes a layer (wave) of requests at once, and the next layer once every reply of this
one has arrived; like aexec's coordinator it does not wait for the broker's confirms before
going on (they are awaited at the end of the run).  Nothing is stored anywhere.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aio_pika
import msgpack

from benchmarks.broker import plain_url
from benchmarks.cpu import trees
from benchmarks.procs import Child, stop_all
from benchmarks.spec import Workload
from benchmarks.systems import ROOT, BenchConfig, Sample, System

WORKER_SCRIPT = ROOT / "benchmarks" / "systems" / "raw_worker.py"
REPLY_PREFETCH = 2000  # aexec's CoordinatorConfig.reply_prefetch


class _Run:
    __slots__ = ("done", "pending", "run_id")

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.pending = 0
        self.done: asyncio.Future[None] | None = None


class RawSystem(System):
    name = "raw-aio-pika"

    def __init__(self, config: BenchConfig) -> None:
        super().__init__(config)
        self.queue = f"{config.prefix}.raw.steps"
        self.reply_queue = f"{config.prefix}.raw.reply.{uuid.uuid4().hex[:8]}"
        self.workers: list[Child] = []
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._runs: dict[str, _Run] = {}
        self._call = msgpack.packb([[], {}], use_bin_type=True)
        self._input = msgpack.packb(True)

    def describe(self) -> dict[str, Any]:
        return {
            "worker_processes": self.config.workers,
            "prefetch": self.config.concurrency,
            "client": "in-process aio-pika; a wave's confirms are awaited at the end of the run",
        }

    def cpu_roles(self) -> dict[str, list[int]]:
        return {"workers": trees(w.pid for w in self.workers)}

    async def __aenter__(self) -> RawSystem:
        broker = plain_url(self.config.broker)
        for k in range(1, self.config.workers + 1):
            name = f"raw-w{k}"
            self.workers.append(
                Child(
                    name,
                    [
                        self.config.python,
                        str(WORKER_SCRIPT),
                        "--broker",
                        broker,
                        "--queue",
                        self.queue,
                        "--prefetch",
                        str(self.config.concurrency),
                        "--name",
                        name,
                    ],
                    log_file=self.config.workdir / f"{name}.log",
                    ready=f"raw worker {name} ready",
                    cwd=str(ROOT),
                )
            )
        try:
            await asyncio.gather(*(w.start() for w in self.workers))
            connection = await aio_pika.connect(broker)
            self._connection = connection
            publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self._exchange = publisher.default_exchange
            consumer = await connection.channel(publisher_confirms=False)
            await consumer.set_qos(prefetch_count=REPLY_PREFETCH)
            replies = await consumer.declare_queue(
                self.reply_queue, durable=True, arguments={"x-max-priority": 10}
            )
            await replies.consume(self._on_reply)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self._connection is not None:
                await self._connection.close()
                self._connection = None
        finally:
            await stop_all(self.workers)

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()
        reply = msgpack.unpackb(message.body, raw=False)
        run = self._runs.get(reply[2])
        if run is None:
            return
        run.pending -= 1
        if run.pending == 0 and run.done is not None and not run.done.done():
            run.done.set_result(None)

    async def _one_run(self, waves: tuple[int, ...]) -> None:
        exchange = self._exchange
        assert exchange is not None
        run = _Run(uuid.uuid4().hex)
        self._runs[run.run_id] = run
        loop = asyncio.get_running_loop()
        inputs: list[bytes] = []
        confirms: list[asyncio.Future[Any]] = []
        try:
            for w, size in enumerate(waves):
                run.pending = size
                run.done = loop.create_future()
                bodies = [
                    msgpack.packb(
                        [
                            1,
                            "step",
                            run.run_id,
                            f"w{w}_s{i}",
                            1,
                            "noop",
                            self._call,
                            inputs,
                            None,
                            self.reply_queue,
                        ],
                        use_bin_type=True,
                    )
                    for i in range(size)
                ]
                # Like aexec's coordinator, the next wave waits for the replies, not for the
                # broker's confirms: those are collected at the end of the run.
                confirms += [
                    asyncio.ensure_future(
                        exchange.publish(
                            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                            self.queue,
                            mandatory=True,
                        )
                    )
                    for body in bodies
                ]
                await run.done
                inputs = [self._input] * size  # the next layer depends on all of this one
            await asyncio.gather(*confirms)
        finally:
            for confirm in confirms:
                confirm.cancel()
            self._runs.pop(run.run_id, None)

    async def run(self, workload: Workload) -> Sample:
        t0 = time.perf_counter()
        await asyncio.gather(*(self._one_run(workload.waves) for _ in range(workload.runs)))
        return Sample(time.perf_counter() - t0)

    def supports(self, workload: Workload) -> str | None:
        if workload.embedded:
            return "no broker in embedded mode"
        return None
