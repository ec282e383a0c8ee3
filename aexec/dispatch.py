"""Publishing the steps a coordinator decided: step messages out, and what happens when
the broker does not confirm them.

A step message whose publish was not confirmed (a lost confirm, a closed connection) may
or may not be queued.  It is never sent again as the same attempt: after a backoff
(growing while publishes keep failing, bounded), the coordinator is told
(:class:`~aexec.inbox.Unconfirmed`) and dispatches the step again as a new attempt,
recorded first, as it does for a lost worker.  If the first attempt did arrive, its
completion is stale and ignored; the attempt spends no retry either way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aexec import messages
from aexec.batch import Outgoing
from aexec.errors import PublishError, TransportError
from aexec.inbox import Unconfirmed
from aexec.recording import one_line
from aexec.transport import Transport
from aexec.wire import MAX_PRIORITY, step_queue

log = logging.getLogger(__name__)

StepMessage = tuple[str, bytes, int]
"""``(queue, body, priority)``: one step message, as the transport publishes it."""


class Dispatcher:
    """Publishes step messages for coordinator ``owner`` (whose replies go to ``reply_to``);
    ``unconfirmed`` is told of each dispatch the broker did not confirm."""

    def __init__(
        self,
        transport: Transport,
        owner: str,
        reply_to: str,
        unconfirmed: Callable[[Unconfirmed], None],
        *,
        delay: float,
        max_delay: float,
    ) -> None:
        self._transport = transport
        self._owner = owner
        self._reply_to = reply_to
        self._unconfirmed = unconfirmed
        self._first_delay = delay
        self._max_delay = max(delay, max_delay)
        self._delay = delay

    def message(self, outgoing: Outgoing) -> StepMessage:
        """The step message for ``outgoing`` (built when it is decided: its inputs are the
        run's outputs now)."""
        run = outgoing.run
        step = run.plan.steps[outgoing.index]
        outputs = run.state.outputs
        body = messages.StepMessage(
            run.run_id,
            step.key,
            outgoing.attempt,
            step.name,
            step.call,
            [outputs[d] for d in step.deps],
            step.timeout,
            self._reply_to,
        ).encode()
        return step_queue(step.queue), body, min(MAX_PRIORITY, run.priority + step.priority)

    async def publish(self, outgoing: list[Outgoing], bodies: list[StepMessage]) -> None:
        """Publish the messages ``bodies`` of ``outgoing``; those not confirmed are handed
        to ``unconfirmed`` after the backoff."""
        try:
            await self._transport.publish_many(bodies)
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
            self._unconfirmed(Unconfirmed(o.run.run_id, o.index, o.attempt, reason))


__all__ = ["Dispatcher", "StepMessage"]
