"""Dead letters for people: what ``aexec dlq list`` shows of each, and its ``--json`` shape.

The transport lists and replays dead letters (:meth:`~aexec.transport.Transport.dead_letters`,
:meth:`~aexec.transport.Transport.replay_dead_letters`); this module reads a dead letter's
body for what it is (its message kind, run, step and attempt) without trusting it: the
signature of a signed body is not checked, and a body that does not decode is described
as malformed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aexec import messages
from aexec.errors import CodecError
from aexec.transport import DeadLetter
from aexec.transport.signed import MAGIC, unframe


@dataclass(frozen=True, slots=True)
class Described:
    """A dead letter and what its body says: ``kind`` is the message kind (None when the
    body is not an aexec message); ``run_id``, ``step`` and ``attempt`` when it names them."""

    letter: DeadLetter
    kind: str | None
    run_id: str | None = None
    step: str | None = None
    attempt: int | None = None
    signed: bool = False

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        """The ``dlq list --json`` line: stable keys, ``age`` in seconds."""
        letter = self.letter
        now = time.time() if now is None else now
        return {
            "id": letter.id,
            "queue": letter.queue,
            "reason": letter.reason,
            "dead_at": letter.dead_at,
            "age": None if letter.dead_at is None else max(0.0, now - letter.dead_at),
            "kind": self.kind,
            "run_id": self.run_id,
            "step": self.step,
            "attempt": self.attempt,
            "signed": self.signed,
            "size": len(letter.body),
            "priority": letter.priority,
        }


def describe(letter: DeadLetter) -> Described:
    """What ``letter``'s body is, as far as it decodes (its signature unchecked)."""
    signed = letter.body.startswith(MAGIC)
    try:
        msg = messages.decode(unframe(letter.body))
    except CodecError:
        return Described(letter, None, signed=signed)
    match msg:
        case (
            messages.StepMessage(run_id=run_id, step_key=step, attempt=attempt)
            | messages.Completion(run_id=run_id, step_key=step, attempt=attempt)
            | messages.Progress(run_id=run_id, step_key=step, attempt=attempt)
        ):
            return Described(letter, msg.KIND, run_id, step, attempt, signed)
        case messages.Submit(run_id=run_id) | messages.Events(run_id=run_id):
            return Described(letter, msg.KIND, run_id, signed=signed)
        case messages.Control(run_id=run_id):
            return Described(letter, msg.KIND, run_id, signed=signed)
        case _:
            return Described(letter, msg.KIND, signed=signed)


__all__ = ["Described", "describe"]
