"""What the coordinator's scheduler takes in: commands and replies, one typed value each.

Everything that changes a run's schedule reaches the scheduler through its :class:`Inbox`,
in arrival order: a delivery from a reply queue (:class:`Reply`: a worker's completion,
progress or heartbeat), a completion the embedded worker handed over (:class:`Handed`),
or a command the coordinator posts itself — a run was submitted (:class:`Start`) or taken
over (:class:`Resume`), cancelled (:class:`Cancel`), a retry's
backoff elapsed (:class:`RetryDue`), a worker stopped heartbeating (:class:`WorkerLost`),
the broker did not confirm a step's message (:class:`Unconfirmed`), a step could not be
sent (:class:`DispatchFailed`), a message naming a run failed its signature
(:class:`MessageRejected`), the trailing commits of the embedded mode may be due
(:class:`FlushDue`), the events of passes that dispatched nothing may be due
(:class:`CommitDue`), or confirmed dispatches wait to be recorded (:class:`ConfirmsDue`).
The scheduler drains the inbox in batches (see :mod:`aexec.batch`) and dispatches on these
types.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from dataclasses import dataclass

from aexec.messages import Completion
from aexec.scheduling import Action
from aexec.transport import Delivery
from aexec.types import ErrorInfo


@dataclass(frozen=True, slots=True)
class Start:
    """Run ``run_id`` was recorded: start it."""

    run_id: str


@dataclass(frozen=True, slots=True)
class Resume:
    """Run ``run_id``, taken over from coordinator ``previous``, goes on with ``actions``
    (what :meth:`~aexec.scheduling.RunState.restore` decided).  ``unconfirmed`` are the
    ``(step index, attempt)`` recorded as queued whose message the broker never confirmed:
    they are dispatched again as new attempts, that one lost.  ``started`` is False for a
    run recorded as pending (its coordinator stopped before starting it): it starts now.
    ``slotted`` are the steps whose attempts hold slots of caps in the store: they hold
    their caps here too."""

    run_id: str
    actions: tuple[Action, ...]
    previous: str | None
    unconfirmed: tuple[tuple[int, int], ...] = ()
    started: bool = True
    slotted: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Queued:
    """Run ``run_id`` waits for admission, at ``position`` in the queue (1: next)."""

    run_id: str
    position: int


@dataclass(frozen=True, slots=True)
class Cancel:
    """Cancel run ``run_id`` (``reason``: why, if the request said)."""

    run_id: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RetryDue:
    """The backoff before ``attempt`` of step ``index`` of run ``run_id`` has elapsed."""

    run_id: str
    index: int
    attempt: int


@dataclass(frozen=True, slots=True)
class WorkerLost:
    """``worker`` stopped heartbeating while it ran ``attempt`` of step ``index``."""

    run_id: str
    index: int
    attempt: int
    worker: str


@dataclass(frozen=True, slots=True)
class Unconfirmed:
    """The publish of ``attempt`` of step ``index`` failed without a confirm (``reason``):
    the broker may or may not hold it."""

    run_id: str
    index: int
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class DispatchFailed:
    """``attempt`` of step ``index`` of run ``run_id`` could not be sent (its message would
    be too large): it fails with ``error``, retried only if ``error`` is retryable."""

    run_id: str
    index: int
    attempt: int
    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class MessageRejected:
    """A message that names run ``run_id`` (a ``kind`` message, of ``step`` and ``attempt``
    when it names them) was refused at ``destination`` for ``reason`` (a bad signature):
    recorded as a ``message_rejected`` event; the run's schedule does not change."""

    run_id: str
    reason: str
    destination: str
    kind: str
    step: str | None = None
    attempt: int = 0


RunCommand = (
    Start
    | Queued
    | Resume
    | Cancel
    | RetryDue
    | WorkerLost
    | Unconfirmed
    | DispatchFailed
    | MessageRejected
)
"""A command about one run; one for a run this coordinator no longer drives is dropped."""


@dataclass(frozen=True, slots=True)
class LetGo:
    """Run ``run_id`` is not driven here any more (taken over, or failed by the store): the
    limits its steps held or waited for are free."""

    run_id: str


@dataclass(frozen=True, slots=True)
class TokensGranted:
    """``tokens`` of rate limit ``gate`` came from the store; ask again for more in
    ``retry_in`` seconds if none are left."""

    gate: str
    tokens: int
    retry_in: float


@dataclass(frozen=True, slots=True)
class SlotsDue:
    """Ask the store again for the slots it refused to ``attempt`` of step ``index`` of run
    ``run_id`` (other coordinators held them)."""

    run_id: str
    index: int
    attempt: int


@dataclass(frozen=True, slots=True)
class UnfreedDue:
    """The store could not free slots of caps in a pass: a later pass frees them (this
    wakes the scheduler for it)."""


@dataclass(frozen=True, slots=True)
class TokensDue:
    """A rate limit may ask the store for tokens again."""


@dataclass(frozen=True, slots=True)
class FlushDue:
    """The flush timer fired: events the embedded mode has not committed yet may be due."""


@dataclass(frozen=True, slots=True)
class CommitDue:
    """The deferral timer fired: events of passes that dispatched nothing may be due
    (:mod:`aexec.deferral`)."""


@dataclass(frozen=True, slots=True)
class ConfirmsDue:
    """The confirm timer fired: dispatches the broker confirmed may wait to be recorded."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A delivery from a reply queue, still undecoded (the scheduler decodes and settles it)."""

    delivery: Delivery


@dataclass(frozen=True, slots=True)
class Handed:
    """A completion the worker in this process handed over as it is (the embedded mode), in
    place of a :class:`Reply` carrying it: nothing to decode, nothing to settle."""

    completion: Completion


Item = (
    RunCommand
    | FlushDue
    | CommitDue
    | ConfirmsDue
    | Reply
    | Handed
    | LetGo
    | TokensGranted
    | TokensDue
    | SlotsDue
    | UnfreedDue
)


class Inbox:
    """The scheduler's queue: :meth:`post` from anywhere on the loop, :meth:`take` in a
    scheduler pass."""

    __slots__ = ("_items", "_wake")

    def __init__(self) -> None:
        self._items: collections.deque[Item] = collections.deque()
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def post(self, item: Item) -> None:
        self._items.append(item)
        self._wake.set()

    async def wait(self) -> None:
        """Return once something was posted since the last wait."""
        await self._wake.wait()
        self._wake.clear()

    def take(self) -> Iterator[Item]:
        """Remove and yield what was posted until now, oldest first; what is posted
        meanwhile waits for the next take, and so does what a pass that failed did not reach."""
        items = self._items
        for _ in range(len(items)):
            yield items.popleft()


__all__ = [
    "Cancel",
    "CommitDue",
    "ConfirmsDue",
    "DispatchFailed",
    "FlushDue",
    "Handed",
    "Inbox",
    "Item",
    "LetGo",
    "MessageRejected",
    "Queued",
    "Reply",
    "Resume",
    "RetryDue",
    "RunCommand",
    "SlotsDue",
    "Start",
    "TokensDue",
    "TokensGranted",
    "Unconfirmed",
    "UnfreedDue",
    "WorkerLost",
]
