"""Worker control through the broker (no shared filesystem): list and terminate workers."""

from __future__ import annotations

import asyncio
import uuid

from aexec import messages
from aexec.errors import CodecError
from aexec.transport import Delivery, Transport
from aexec.wire import CONTROL_TOPIC


async def list_workers(transport: Transport, *, wait: float = 0.5) -> list[messages.WorkerInfo]:
    """Ping every worker and collect the answers that arrive within ``wait`` seconds."""
    reply_queue = f"control-reply.{uuid.uuid4().hex[:12]}"
    await transport.declare_queue(reply_queue, max_priority=0, durable=False, auto_delete=True)
    found: dict[str, messages.WorkerInfo] = {}

    async def collect(delivery: Delivery) -> None:
        await delivery.ack()
        try:
            msg = messages.decode(delivery.body)
        except CodecError:
            return
        if isinstance(msg, messages.WorkerInfo):
            found[msg.name] = msg

    subscription = await transport.consume(reply_queue, collect, prefetch=100)
    try:
        await transport.broadcast(
            CONTROL_TOPIC, messages.Control("ping", None, reply_queue).encode()
        )
        await asyncio.sleep(wait)  # answers have no known count: collect for a fixed window
    finally:
        await subscription.cancel()
    return sorted(found.values(), key=lambda w: w.name)


async def terminate_workers(transport: Transport, name: str | None = None) -> None:
    """Ask worker ``name`` (or every worker, for None) to drain and exit."""
    await transport.broadcast(CONTROL_TOPIC, messages.Control("terminate", name).encode())
