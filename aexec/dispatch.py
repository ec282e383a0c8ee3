"""Publishing the steps a coordinator decided: step messages out, and what happens when
the broker does not confirm them.

A step message whose publish was not confirmed (a lost confirm, a closed connection) may
or may not be queued.  It is never sent again as the same attempt: after a backoff
(growing while publishes keep failing, bounded), the coordinator is told
(:class:`~aexec.inbox.Unconfirmed`) and dispatches the step again as a new attempt,
recorded first, as it does for a lost worker.  If the first attempt did arrive, its
completion is stale and ignored; the attempt spends no retry either way.

No step message is larger than ``max_message_size``: one that would be has its largest
inline inputs moved to the object store first (:mod:`aexec.claim`), or, when that cannot be
done, its step fails (:class:`~aexec.inbox.DispatchFailed`) with a clear error.

A transport whose consumers are in this process (the memory transport: an embedded run) is
handed the step messages as objects (:class:`~aexec.transport.HandsOver`): nothing is
encoded or decoded on the way, unless a message might be over the size limit (it goes the
ordinary way, encoded and measured).

Steps of another kind (Celery tasks) go to the gateway for their kind
(:mod:`aexec.gateway`) instead of a step queue; one whose kind has no gateway here fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from aexec import claim, messages
from aexec.batch import ActiveRun, Outgoing
from aexec.errors import (
    ObjectStoreError,
    PlanError,
    PublishError,
    TransportError,
    ValueTooLargeError,
)
from aexec.gateway import Gateway, GatewayStep
from aexec.inbox import DispatchFailed, Item, Unconfirmed
from aexec.objects import ObjectStore
from aexec.plan import NATIVE
from aexec.recording import one_line
from aexec.transport import HandsOver, Transport
from aexec.types import ErrorInfo
from aexec.wire import MAX_PRIORITY, step_queue

log = logging.getLogger(__name__)

StepMessage = tuple[str, bytes, int]
"""``(queue, body, priority)``: one step message, as the transport publishes it."""

Publish = Callable[[list[tuple[str, Any, int]]], Coroutine[Any, Any, None]]
"""``publish_many``, or ``hand_many`` of a transport that takes messages as objects."""


class Dispatcher:
    """Publishes step messages for coordinator ``owner`` (whose replies go to ``reply_to``);
    ``confirmed`` is told of the dispatches the broker confirmed, as ``(run id, step key,
    attempt)``; ``post`` of each it did not confirm (:class:`Unconfirmed`) and of each that
    could not be sent (:class:`DispatchFailed`).  Inputs too large for a
    message of ``max_message_size`` bytes go to ``objects``."""

    def __init__(
        self,
        transport: Transport,
        owner: str,
        reply_to: str,
        post: Callable[[Item], None],
        *,
        delay: float,
        max_delay: float,
        objects: ObjectStore | None = None,
        max_message_size: int,
        confirmed: Callable[[list[tuple[str, str, int]]], None] | None = None,
        gateways: Mapping[str, Gateway] | None = None,
    ) -> None:
        self._transport = transport
        self._owner = owner
        self._reply_to = reply_to
        self._post = post
        self._first_delay = delay
        self._max_delay = max(delay, max_delay)
        self._delay = delay
        self._objects = objects
        self._limit = max_message_size
        self._confirmed = confirmed
        self._gateways = dict(gateways or {})
        self._hand = transport.hand_many if isinstance(transport, HandsOver) else None

    def send(self, outgoing: list[Outgoing]) -> Coroutine[Any, Any, None]:
        """Build the messages of ``outgoing`` now (their inputs are the run's outputs now)
        and return the coroutine that publishes them: native steps to their step queues,
        the others through their gateways."""
        if all(o.run.plan.steps[o.index].kind == NATIVE for o in outgoing):
            if self._hand is not None:
                return self._hand_over(outgoing, [self._message(o) for o in outgoing])
            return self.publish(outgoing, [self.message(o) for o in outgoing])
        native = [o for o in outgoing if o.run.plan.steps[o.index].kind == NATIVE]
        foreign: dict[str, list[GatewayStep]] = {}
        for o in outgoing:
            step = o.run.plan.steps[o.index]
            if step.kind != NATIVE:
                foreign.setdefault(step.kind, []).append(
                    GatewayStep(
                        o.run.run_id,
                        o.index,
                        o.attempt,
                        step,
                        _inputs(o.run, o.index),
                        min(MAX_PRIORITY, o.run.priority + step.priority),
                    )
                )
        return self._send(native, [self.message(o) for o in native], foreign)

    async def _send(
        self,
        native: list[Outgoing],
        bodies: list[StepMessage],
        foreign: dict[str, list[GatewayStep]],
    ) -> None:
        for kind, steps in foreign.items():
            gateway = self._gateways.get(kind)
            if gateway is None:
                error = ErrorInfo.from_exception(
                    PlanError(f"this coordinator has no gateway for {kind} steps"),
                    retryable=False,
                )
                for s in steps:
                    self._post(DispatchFailed(s.run_id, s.index, s.attempt, error))
            else:
                confirmed = await gateway.publish(steps)
                if confirmed and self._confirmed is not None:
                    self._confirmed([(s.run_id, s.step.key, s.attempt) for s in confirmed])
        if native:
            await self.publish(native, bodies)

    def message(self, outgoing: Outgoing, inputs: list[bytes] | None = None) -> StepMessage:
        """The step message for ``outgoing`` (built when it is decided: its inputs are the
        run's outputs now, or ``inputs``)."""
        queue, message, priority = self._message(outgoing, inputs)
        return queue, message.encode(), priority

    def _message(
        self, outgoing: Outgoing, inputs: list[bytes] | None = None
    ) -> tuple[str, messages.StepMessage, int]:
        """:meth:`message`, not encoded."""
        run = outgoing.run
        step = run.plan.steps[outgoing.index]
        message = messages.StepMessage(
            run.run_id,
            step.key,
            outgoing.attempt,
            step.address,
            step.call,
            _inputs(run, outgoing.index) if inputs is None else inputs,
            step.timeout,
            self._reply_to,
            run.trace,
        )
        return step_queue(step.route), message, min(MAX_PRIORITY, run.priority + step.priority)

    async def _hand_over(
        self, outgoing: list[Outgoing], handed: list[tuple[str, messages.StepMessage, int]]
    ) -> None:
        """Hand the messages ``handed`` of ``outgoing`` to the transport as objects; one that
        might be over the size limit goes the ordinary way (:meth:`publish`)."""
        assert self._hand is not None
        limit = self._limit
        if all(_surely_fits(message, limit) for _, message, _ in handed):
            await self._publish(outgoing, handed, self._hand)
            return
        small = [_surely_fits(message, limit) for _, message, _ in handed]
        large = [o for o, fits in zip(outgoing, small, strict=True) if not fits]
        await self.publish(large, [self.message(o) for o in large])
        outgoing = [o for o, fits in zip(outgoing, small, strict=True) if fits]
        if outgoing:
            handed = [h for h, fits in zip(handed, small, strict=True) if fits]
            await self._publish(outgoing, handed, self._hand)

    async def publish(self, outgoing: list[Outgoing], bodies: list[StepMessage]) -> None:
        """Publish the messages ``bodies`` of ``outgoing``; those not confirmed are posted
        as :class:`Unconfirmed` after the backoff.  A message over the size limit goes
        with its inputs in the object store, or its step fails."""
        fits = [len(body) <= self._limit for _, body, _ in bodies]
        if not all(fits):
            for o, (_, body, _), fit in zip(outgoing, bodies, fits, strict=True):
                if not fit:
                    await self._publish_oversized(o, len(body))
            outgoing = [o for o, fit in zip(outgoing, fits, strict=True) if fit]
            bodies = [b for b, fit in zip(bodies, fits, strict=True) if fit]
            if not bodies:
                return
        await self._publish(outgoing, bodies)

    async def _publish_oversized(self, outgoing: Outgoing, size: int) -> None:
        """Publish a step whose message would be ``size`` bytes, over the limit: with its
        largest inputs moved to the object store, or, if that cannot be done, fail it."""
        run, index = outgoing.run, outgoing.index
        step = run.plan.steps[index]
        try:
            inputs = await claim.fit_inputs(
                self._objects, run, index, _inputs(run, index), size - self._limit + claim.ENVELOPE
            )
            message = self.message(outgoing, inputs)
            if len(message[1]) > self._limit:
                raise ValueTooLargeError(
                    f"the message of step {step.key!r} is {len(message[1])} bytes with its "
                    f"inputs in the object store, over the {self._limit}-byte limit: its call "
                    f"holds {len(step.call)} bytes of constants"
                )
        except (ObjectStoreError, ValueTooLargeError) as exc:
            log.error("coordinator %s cannot send step %s of run %s: %s",
                      self._owner, step.key, run.run_id, exc)  # fmt: skip
            error = ErrorInfo.from_exception(exc, retryable=isinstance(exc, ObjectStoreError))
            self._post(DispatchFailed(run.run_id, index, outgoing.attempt, error))
            return
        await self._publish([outgoing], [message])

    async def _publish(
        self,
        outgoing: list[Outgoing],
        bodies: list[tuple[str, Any, int]],
        publish: Publish | None = None,
    ) -> None:
        """Publish ``bodies`` (or hand them over, with ``publish``) and tell ``confirmed``;
        those not confirmed are posted as :class:`Unconfirmed` after the backoff."""
        try:
            await (publish or self._transport.publish_many)(bodies)
        except PublishError as exc:
            unsent = {id(body) for _, body, _ in exc.unsent}
            failed = [
                o for o, (_, body, _) in zip(outgoing, bodies, strict=True) if id(body) in unsent
            ]
            reason = one_line(str(exc))
        except TransportError as exc:
            failed, reason = outgoing, one_line(str(exc))
        else:
            self._delay = self._first_delay
            if self._confirmed is not None:
                steps = [(o.run.run_id, o.run.plan.steps[o.index].key, o.attempt) for o in outgoing]
                self._confirmed(steps)
            return
        delay = self._delay
        self._delay = min(delay * 2, self._max_delay)
        log.warning(
            "coordinator %s: %d step messages were not confirmed, dispatching them again as "
            "new attempts in %.2fs: %s",
            self._owner,
            len(failed),
            delay,
            reason,
        )
        await asyncio.sleep(delay)
        for o in failed:
            self._post(Unconfirmed(o.run.run_id, o.index, o.attempt, reason))


def _surely_fits(message: messages.StepMessage, limit: int) -> bool:
    """``message`` surely encodes within ``limit`` bytes (its texts at 4 bytes a character,
    8 bytes of framing an input)."""
    texts = (
        len(message.run_id)
        + len(message.step_key)
        + len(message.name)
        + len(message.reply_to)
        + len(message.trace or "")
    )
    size = len(message.call) + sum(len(i) + 8 for i in message.inputs)
    return size + 4 * texts + 128 <= limit


def _inputs(run: ActiveRun, index: int) -> list[bytes]:
    """The encoded upstream outputs step ``index`` takes, as its message carries them (a
    reference for those moved to the object store already)."""
    state, spilled = run.state, run.spilled
    step = state.plan.steps[index]
    outputs, deps = state.outputs, step.deps
    if not spilled:
        inputs = [outputs[d] for d in deps]
    else:
        inputs = [spilled.get(d) or outputs[d] for d in deps]
    if step.element is not None:  # a step of a map: one item of the list, not the list
        inputs[deps.index(step.map_over)] = state.item(index)
    return inputs


__all__ = ["Dispatcher", "StepMessage"]
