"""The gateway port: steps that aexec workers do not run, such as Celery tasks.

A plan step's ``kind`` says who runs it: aexec workers (:data:`~aexec.plan.NATIVE`), or
the coordinator's gateway for that kind (``"celery"``: :mod:`aexec.celery.gateway`).  The
coordinator decides, records and fences a gateway step exactly as a native one; only the
sending differs.  A gateway speaks the other system's protocol and hands back what it
hears as aexec's own reply messages (a :class:`~aexec.messages.Completion`,
:class:`~aexec.messages.Progress` or :class:`~aexec.messages.Heartbeat`, in a
:class:`~aexec.inbox.Reply`), so completions are recorded once per
``(run, step, attempt)`` whatever repeats on the way, and replies about runs another
coordinator drives are forwarded to it like any other.

A gateway posts to the coordinator's inbox: ``Reply`` for what it hears,
:class:`~aexec.inbox.DispatchFailed` for a step it cannot send (a value that does not fit
the other side, a queue nobody declared), :class:`~aexec.inbox.Unconfirmed` for a send the
broker did not confirm.  It owns its background tasks from :meth:`Gateway.start` to
:meth:`Gateway.close`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aexec.inbox import Item
from aexec.plan import PlanStep


@dataclass(frozen=True, slots=True)
class GatewayStep:
    """``attempt`` of step ``step`` (number ``index``) of run ``run_id``, with its encoded
    inputs (an encoded ``ObjectRef`` for a large one) and effective ``priority``."""

    run_id: str
    index: int
    attempt: int
    step: PlanStep
    inputs: list[bytes]
    priority: int


class Gateway(Protocol):
    async def start(self, post: Callable[[Item], None]) -> None:
        """Connect and start listening for replies, posting what arrives to ``post``."""

    async def close(self) -> None:
        """Stop listening; replies not yet acknowledged stay with the broker."""

    async def publish(self, steps: Sequence[GatewayStep]) -> list[GatewayStep]:
        """Send ``steps``; return those the broker confirmed (failures are posted, never
        raised)."""

    async def revoke(self, attempts: Sequence[tuple[str, str, int]]) -> None:
        """Stop these ``(run_id, step_key, attempt)`` wherever they wait or run (their
        run was cancelled); best effort."""

    def vouch(self, attempts: Sequence[tuple[str, str, int, str]]) -> None:
        """These ``(run_id, step_key, attempt, worker)`` were running when this coordinator
        took their run over: listen for them as for those it saw start."""


__all__ = ["Gateway", "GatewayStep"]
