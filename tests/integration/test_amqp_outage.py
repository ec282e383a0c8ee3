"""The RabbitMQ transport while its connection is down, beyond the transport contract: every
operation fails with a :class:`~aexec.errors.TransportError` its callers retry, never with
aio-pika's own exceptions, which would stop a coordinator or worker (the fault campaign saw
a coordinator exit on ``RuntimeError: Connection was not opened`` when a takeover opened
a consumer on a reply queue during a broker restart)."""

from __future__ import annotations

import asyncio

import pytest

from aexec.errors import TransportError
from aexec.transport import Delivery
from aexec.transport.amqp import AmqpTransport
from tests.plugins.private_rabbitmq import PrivateRabbit

pytestmark = pytest.mark.rabbitmq


async def test_consuming_while_the_connection_is_down_raises_transport_error_then_works(
    private_rabbitmq: PrivateRabbit,
) -> None:
    transport = AmqpTransport(private_rabbitmq.url, prefix="outage", connect_timeout=5.0)
    await transport.open()
    got: list[bytes] = []
    arrived = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        got.append(delivery.body)
        arrived.set()
        await delivery.ack()

    try:
        await transport.declare_queue("replies")
        await asyncio.to_thread(private_rabbitmq.stop_app)
        try:
            async with asyncio.timeout(30):
                for _ in iter(lambda: transport_connected(transport), False):
                    await asyncio.sleep(0.05)  # until the client notices
            with pytest.raises(TransportError, match="cannot open a channel"):
                await transport.consume("replies", handler, prefetch=1)
        finally:
            await asyncio.to_thread(private_rabbitmq.start_app)
        async with asyncio.timeout(30):  # reconnected: the same call works
            while True:
                try:
                    subscription = await transport.consume("replies", handler, prefetch=1)
                    break
                except TransportError:
                    await asyncio.sleep(0.2)
            await transport.publish("replies", b"after the outage")
            await arrived.wait()
        assert got == [b"after the outage"]
        await subscription.cancel()
    finally:
        await transport.close()


def transport_connected(transport: AmqpTransport) -> bool:
    connection = transport._connection
    return connection is not None and connection.transport is not None
