"""Control through the broker (no shared filesystem): list and terminate workers, and
cancel runs."""

from __future__ import annotations

import asyncio
import uuid

from aexec import messages
from aexec.errors import CodecError
from aexec.store import Store
from aexec.transport import Delivery, Transport
from aexec.wire import CONTROL_TOPIC, COORDINATOR_TOPIC, REQUEST_QUEUE, check_run_id


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


async def cancel_run(
    run_id: str,
    reason: str | None = None,
    *,
    store: Store | None = None,
    transport: Transport | None = None,
) -> None:
    """Ask for run ``run_id`` to be cancelled (``reason``: why, shown in its
    ``run_cancelled`` event), durably, from anywhere: once this returns the request is kept
    until a coordinator honours it — the one driving the run now, one that takes the run
    over, or the one that starts it later (its submission may still be queued).

    With a ``store``, the request is recorded there (:meth:`Store.request_cancel
    <aexec.store.Store.request_cancel>`) and, with a ``transport`` too, broadcast to the
    coordinators so that the run's coordinator acts at once (else at its next lease
    renewal).  With only a ``transport``, it is published to the durable
    :data:`~aexec.wire.REQUEST_QUEUE`, where a coordinator service records it.  A bad
    ``run_id`` is a :class:`~aexec.errors.CodecError`; store and broker errors are raised
    as they are (nothing is recorded then)."""
    check_run_id(run_id)
    command = messages.Control("cancel", run_id=run_id, reason=reason).encode()
    if store is not None:
        await store.request_cancel(run_id, reason)
        if transport is not None:
            await transport.broadcast(COORDINATOR_TOPIC, command)
        return
    if transport is None:
        raise ValueError("cancel_run needs a store or a transport")
    await transport.declare_queue(REQUEST_QUEUE, max_priority=0)
    await transport.publish(REQUEST_QUEUE, command)
