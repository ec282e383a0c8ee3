"""The raw floor's worker: a plain aio-pika consumer that answers every request.

    python benchmarks/systems/raw_worker.py --broker URL --queue NAME --prefetch N --name W

It does what an aexec worker must do at the least, and nothing else: consume a msgpack
request from a durable priority queue (``basic.qos`` prefetch N), decode it, publish a
msgpack reply to the request's reply queue with publisher confirms (persistent, mandatory),
then ack the request.  Requests are handled concurrently, one task each, as aexec does.
Prints ``raw worker W ready`` once it consumes; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time

import aio_pika
import msgpack

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]


async def serve(broker: str, queue_name: str, prefetch: int, name: str) -> None:
    connection = await aio_pika.connect(broker)
    async with connection:
        consumer = await connection.channel(publisher_confirms=False)
        await consumer.set_qos(prefetch_count=prefetch)
        publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = publisher.default_exchange
        queue = await consumer.declare_queue(
            queue_name, durable=True, arguments={"x-max-priority": 10}
        )
        tasks: set[asyncio.Task[None]] = set()
        true = msgpack.packb(True)

        async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            started = time.time()
            request = msgpack.unpackb(message.body, raw=False)
            # [v, "step", run_id, step_key, attempt, name, call, inputs, timeout, reply_to]
            reply = msgpack.packb(
                [
                    1,
                    "done",
                    request[2],
                    request[3],
                    request[4],
                    true,
                    None,
                    name,
                    started,
                    time.time(),
                ],
                use_bin_type=True,
            )
            await exchange.publish(
                aio_pika.Message(reply, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                request[9],
                mandatory=True,
            )
            await message.ack()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            task = asyncio.get_running_loop().create_task(handle(message))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        await queue.consume(on_message)
        print(f"raw worker {name} ready", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await consumer.close()
        if tasks:
            await asyncio.wait(tasks, timeout=5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="raw_worker")
    parser.add_argument("--broker", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--name", default="raw")
    args = parser.parse_args(argv)
    coro = serve(args.broker, args.queue, args.prefetch, args.name)
    if uvloop is not None:
        uvloop.run(coro)
    else:  # pragma: no cover
        asyncio.run(coro)
    sys.exit(0)


if __name__ == "__main__":
    main()
