"""A worker's completions on their way to coordinators: coalesced, confirmed, then acked.

Request/reply costs two messages and four frames per step: the step and its completion,
each published and acked.  Completions that finish close together on one worker and go
to the same coordinator can share a message (:class:`~aexec.messages.Completions`), and
their step deliveries one ``basic.ack`` with ``multiple``
(:meth:`~aexec.transport.Transport.ack_many`).  :class:`Outbox` does both, without making
a lone completion wait:

* a completion with nothing in flight to its reply queue is published at once (alone: a
  plain :class:`~aexec.messages.Completion`, as before coalescing);
* those that finish while a publish to the same queue waits for its confirm gather and go
  in one message when it is confirmed — or, if that takes longer than ``window``
  seconds, in a publish of their own (at most :data:`MAX_IN_FLIGHT` per queue);
* a message holds at most ``max_bytes`` of completions (more go in several messages);
  a completion larger than that travels alone.

What each guarantee rests on:

* a step's delivery is acked only once the message carrying its completion is confirmed,
  so a worker that dies before that leaves the delivery to the broker (redelivered,
  reported lost, run again as a new attempt: the completion, if it did reach the
  coordinator, is recorded once);
* an ack with ``multiple`` covers only deliveries handed to it (the transport checks that
  no older unsettled delivery of the same consumer is in its range);
* the coordinator applies, records and settles each completion of a message as if it had
  come alone (:mod:`aexec.parts`), and acks the message only once all are committed.

Publishing is retried with backoff while the broker fails, until it works or the
publishing task is cancelled (a stopping worker's grace bounds it); a reply queue that
does not exist is given up at once (its coordinator is gone, and with it anyone who could
use the completion), and the deliveries are acked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aexec import messages
from aexec.errors import AexecError, TransportError, UnroutableError
from aexec.transport import Delivery, Transport

log = logging.getLogger(__name__)

WINDOW = 0.001
"""How long a completion may wait for a publish in flight before it goes on its own."""

MAX_BYTES = 1024 * 1024
"""The most completion bytes one message carries."""

MAX_IN_FLIGHT = 4
"""Publishes in flight to one reply queue at a time."""

Start = Callable[[Coroutine[Any, Any, None]], object]
"""Runs a coroutine as a task of the worker's group; raises AexecError if it is stopping."""


@dataclass(slots=True, eq=False)
class _Pending:
    completion: messages.Completion
    delivery: Delivery | None
    sent: asyncio.Future[None]


class Outbox:
    """Completions to publish, per reply queue, for worker ``name``; :meth:`send` is all
    there is to it.  ``window`` 0 sends each completion alone, acked alone, as a worker did
    before coalescing."""

    def __init__(
        self,
        transport: Transport,
        start: Start,
        *,
        name: str,
        window: float = WINDOW,
        max_bytes: int = MAX_BYTES,
        retry_max: float = 5.0,
    ) -> None:
        self._transport = transport
        self._start = start
        self._name = name
        self._window = window
        self._max_bytes = max_bytes
        self._retry_max = retry_max
        self._pending: dict[str, list[_Pending]] = {}
        self._in_flight: dict[str, int] = {}  # flushers per reply queue
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.messages = 0
        """Messages published so far (each carries one or more completions)."""
        self.completions = 0
        """Completions published so far."""

    async def send(
        self, reply_to: str, completion: messages.Completion, delivery: Delivery | None
    ) -> None:
        """Publish ``completion`` to ``reply_to`` (with others, if they are ready within the
        window), then ack ``delivery`` (if given); returns once both are done, or once the
        reply queue is known to be gone.  If the caller is cancelled meanwhile, the
        completion is still published and ``delivery`` still acked."""
        loop = asyncio.get_running_loop()
        pending = _Pending(completion, delivery, loop.create_future())
        self._pending.setdefault(reply_to, []).append(pending)
        if self._window <= 0 or not self._in_flight.get(reply_to):
            self._in_flight[reply_to] = self._in_flight.get(reply_to, 0) + 1
            try:
                self._start(self._flush(reply_to))
            except AexecError:  # the worker is stopping: publish it from here
                await self._flush(reply_to)
                return
        elif reply_to not in self._timers:
            self._timers[reply_to] = loop.call_later(self._window, self._overdue, reply_to)
        await pending.sent

    def _overdue(self, reply_to: str) -> None:
        """Completions waited ``window`` for the publish in flight: one more publish."""
        self._timers.pop(reply_to, None)
        if not self._pending.get(reply_to) or self._in_flight.get(reply_to, 0) >= MAX_IN_FLIGHT:
            return  # a flusher in flight takes them once its publish is confirmed
        self._in_flight[reply_to] = self._in_flight.get(reply_to, 0) + 1
        try:
            self._start(self._flush(reply_to))
        except AexecError:
            self._in_flight[reply_to] -= 1  # stopping: the flushers in flight take them

    async def _flush(self, reply_to: str) -> None:
        """Publish what waits for ``reply_to``, then what gathered meanwhile, until none.
        If that fails unexpectedly (a bug: transport errors are retried), its senders and
        those waiting behind them get the error instead of waiting forever."""
        batch: list[_Pending] = []
        try:
            while batch := self._pending.pop(reply_to, []):
                timer = self._timers.pop(reply_to, None)
                if timer is not None:
                    timer.cancel()
                if self._window <= 0:
                    chunks = [[pending] for pending in batch]
                else:
                    chunks = self._chunks(batch)
                for chunk in chunks:
                    await self._deliver(reply_to, chunk)
        except Exception as exc:
            for pending in batch + self._pending.pop(reply_to, []):
                if not pending.sent.done():
                    pending.sent.set_exception(exc)
            raise
        finally:
            self._in_flight[reply_to] -= 1
            if not self._in_flight[reply_to]:
                del self._in_flight[reply_to]

    def _chunks(self, batch: list[_Pending]) -> list[list[_Pending]]:
        """``batch`` cut into messages of at most ``max_bytes`` of completions each."""
        chunks: list[list[_Pending]] = [[]]
        size = 0
        for pending in batch:
            # A completion's size, near enough without packing it: its output and error.
            item = len(pending.completion.output or b"") + _error_size(pending.completion)
            if chunks[-1] and size + item > self._max_bytes:
                chunks.append([])
                size = 0
            chunks[-1].append(pending)
            size += item
        return chunks

    async def _deliver(self, reply_to: str, chunk: list[_Pending]) -> None:
        """Publish ``chunk`` as one message, ack its deliveries, wake its senders."""
        if len(chunk) == 1:
            body = chunk[0].completion.encode()
        else:
            completions = [pending.completion for pending in chunk]
            body = messages.completions_body(
                [messages.pack_completion(c) for c in completions], completions
            )
        await self._publish(reply_to, body, chunk)
        deliveries = [pending.delivery for pending in chunk if pending.delivery is not None]
        if deliveries:
            try:
                await self._transport.ack_many(deliveries)
            except TransportError as exc:
                log.info(
                    "worker %s could not ack %d step message(s) (they will be redelivered): %s",
                    self._name,
                    len(deliveries),
                    exc,
                )
        for pending in chunk:
            if not pending.sent.done():  # its sender may have been cancelled
                pending.sent.set_result(None)

    async def _publish(self, reply_to: str, body: bytes, chunk: list[_Pending]) -> None:
        delay = 0.05
        while True:
            try:
                await self._transport.publish(reply_to, body)
            except UnroutableError:
                log.warning(
                    "worker %s dropped %s: its coordinator's reply queue %s is gone",
                    self._name,
                    _describe(chunk),
                    reply_to,
                )
                return
            except AexecError as exc:
                log.warning(
                    "worker %s: publishing %s failed, retrying in %.2fs: %s",
                    self._name,
                    _describe(chunk),
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
            else:
                self.messages += 1
                self.completions += len(chunk)
                return


def _error_size(completion: messages.Completion) -> int:
    error = completion.error
    if error is None:
        return 64
    return 64 + 4 * (len(error.message) + len(error.traceback))  # up to 4 bytes a character


def _describe(chunk: list[_Pending]) -> str:
    if len(chunk) > 1:
        return f"the completions of {len(chunk)} steps"
    c = chunk[0].completion
    return f"the completion of step {c.step_key} (attempt {c.attempt}) of run {c.run_id}"


__all__ = ["MAX_BYTES", "MAX_IN_FLIGHT", "WINDOW", "Outbox"]
