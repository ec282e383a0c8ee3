"""Several confirmed publishes written to RabbitMQ in one socket write.

aiormq writes each publish as a frame set of its own, one ``send`` each: a coordinator
publishing a layer of ten steps made ten system calls, and on loopback each one also runs
the broker's side of TCP, which on a busy 2-core machine costs more than the publish
itself.  :func:`put_publishes` does what ``Channel.basic_publish`` does for each message
(a delivery tag, a confirmation future the broker's ack, nack or return resolves, the
message id its return is matched by) under the channel's publish lock, but hands the
connection's writer the frames of all of them as ONE :class:`aiormq.abc.ChannelFrame`.
The broker sees the same methods in the same order as from separate publishes, and
confirms each as before; nothing here waits for the write (the confirms are what tell).

It uses aiormq's channel attributes that ``basic_publish`` uses (``lock``,
``delivery_tag``, ``confirmations``, ``message_id_delivery_tag``, ``write_queue``,
``_split_body``):
:func:`batchable` checks that the channel has them, and callers fall back to one
``basic_publish`` per message when it does not (another aiormq version).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aiormq
from aiormq.abc import ChannelFrame
from pamqp.commands import Basic
from pamqp.header import ContentHeader

_NEEDED = (
    "lock",
    "delivery_tag",
    "confirmations",
    "message_id_delivery_tag",
    "write_queue",
    "_split_body",
)

Publish = tuple[str, bytes, Basic.Properties]
"""``(routing key, body, properties)`` of one mandatory publish to the default exchange;
its properties carry a ``message_id`` unique on the channel (a returned message is matched
to its confirmation by it)."""


def batchable(channel: object) -> bool:
    """True if ``channel`` is an aiormq channel with confirms whose publishes
    :func:`put_publishes` can batch."""
    return (
        isinstance(channel, aiormq.Channel)
        and bool(channel.publisher_confirms)
        and all(hasattr(channel, name) for name in _NEEDED)
    )


async def put_publishes(
    channel: aiormq.Channel, publishes: Sequence[Publish]
) -> list[asyncio.Future[Any]]:
    """Queue ``publishes`` on ``channel`` as one write; return their confirmations, in
    order: each resolves with the broker's ack, or fails as ``basic_publish`` would
    (:class:`aiormq.exceptions.PublishError` returned unroutable,
    :class:`aiormq.exceptions.DeliveryError` nacked, a channel error if it closes).
    If queueing fails or is cancelled, nothing of the batch was handed to the writer and
    the channel's delivery tags are as before."""
    if channel.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
    frames: list[Any] = []
    confirmations: list[asyncio.Future[Any]] = []
    ids: list[tuple[str, int]] = []
    async with channel.lock:
        first = channel.delivery_tag
        try:
            for routing_key, body, properties in publishes:
                if not properties.message_id:
                    raise ValueError("a batched publish needs a message id")
                channel.delivery_tag += 1
                tag = channel.delivery_tag
                confirmation = channel.create_future()
                channel.confirmations[tag] = confirmation
                channel.message_id_delivery_tag[properties.message_id] = tag
                ids.append((properties.message_id, tag))
                confirmations.append(confirmation)
                frames.append(Basic.Publish(exchange="", routing_key=routing_key, mandatory=True))
                frames.append(ContentHeader(properties=properties, body_size=len(body)))
                frames.extend(channel._split_body(body))
            await channel.write_queue.put(
                ChannelFrame.marshall(channel_number=channel.number, frames=frames)
            )
        except BaseException:
            # Not handed to the writer: the broker never sees these tags.
            channel.delivery_tag = first
            for (message_id, tag), confirmation in zip(ids, confirmations, strict=True):
                channel.confirmations.pop(tag, None)
                if channel.message_id_delivery_tag.get(message_id) == tag:
                    channel.message_id_delivery_tag.pop(message_id)
                confirmation.cancel()
            raise
    for (message_id, tag), confirmation in zip(ids, confirmations, strict=True):
        confirmation.add_done_callback(_forgetter(channel, message_id, tag))
    return confirmations


def _forgetter(channel: aiormq.Channel, message_id: str, tag: int) -> Any:
    def forget(_: asyncio.Future[Any]) -> None:
        if channel.message_id_delivery_tag.get(message_id) == tag:
            channel.message_id_delivery_tag.pop(message_id)

    return forget


async def outcomes(futures: list[asyncio.Future[Any]]) -> list[Any]:
    """What ``asyncio.gather(*futures, return_exceptions=True)`` returns for the confirmations
    :func:`put_publishes` returns, the futures awaited one after the other instead.  The
    broker confirms a batch at once (aiormq resolves every future of an ack with
    ``multiple`` in one loop round), so only the first await suspends, and no gathering
    future costs a loop round more and a callback a future.  A cancelled caller is cancelled
    as with gather: the future it awaited is cancelled; aiormq resolves the others, unread."""
    results: list[Any] = []
    task = asyncio.current_task()
    for future in futures:
        try:
            results.append(await future)
        except asyncio.CancelledError as exc:
            if task is not None and task.cancelling():
                raise  # the caller was cancelled
            results.append(exc)  # the future was (a closing channel's)
        except Exception as exc:
            results.append(exc)
    return results


__all__ = ["Publish", "batchable", "outcomes", "put_publishes"]
