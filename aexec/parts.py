"""One delivery that carries several completions, handed out as one delivery per completion.

A worker coalesces completions that finish close together into one
:class:`~aexec.messages.Completions` message (:mod:`aexec.outbox`).  The coordinator takes
each completion in it as if it had come alone — applied, recorded and settled on its own,
or set aside as a stray and forwarded to the run's owner — through a :class:`Part` each.
The broker's delivery is settled once every part is:

* every part acked: the delivery is acked (each completion's effect is committed);
* some part handed back (requeued): the whole delivery is requeued, and the completions
  already applied come back too — a duplicate completion is recorded once, so they are
  acked again without effect;
* some part dead-lettered, none handed back: the whole delivery is dead-lettered with
  that part's reason (the others' effects are committed already: a replay is harmless).

Until then nothing is settled, so a coordinator that dies half-way through a batch leaves
the whole delivery to the broker, which redelivers it.
"""

from __future__ import annotations

from aexec import messages
from aexec.transport import Delivery


class _Whole:
    """The broker's delivery and what its parts decided so far."""

    __slots__ = ("delivery", "left", "reason", "reject", "requeue")

    def __init__(self, delivery: Delivery, parts: int) -> None:
        self.delivery = delivery
        self.left = parts
        self.requeue = False
        self.reject = False
        self.reason: str | None = None

    async def settled(self) -> None:
        """One more part is settled; the last one settles the delivery."""
        self.left -= 1
        if not self.left:
            await self.settle()

    async def settle(self) -> None:
        """Every part is settled: settle the delivery as they decided."""
        if self.requeue:
            await self.delivery.reject(requeue=True)
        elif self.reject:
            await self.delivery.reject(requeue=False, reason=self.reason)
        else:
            await self.delivery.ack()


class Part:
    """One completion of a coalesced delivery, as a delivery of its own: ``body`` is the
    completion alone (what a stray forwards to its run's owner)."""

    __slots__ = ("_done", "_whole", "msg")

    def __init__(self, whole: _Whole, msg: messages.Completion) -> None:
        self._whole = whole
        self._done = False
        self.msg = msg

    @property
    def body(self) -> bytes:
        return self.msg.encode()

    @property
    def redelivered(self) -> bool:
        return self._whole.delivery.redelivered

    async def ack(self) -> None:
        if not self._done:
            self._done = True
            await self._whole.settled()

    async def reject(self, requeue: bool = False, *, reason: str | None = None) -> None:
        if self._done:
            return
        self._done = True
        whole = self._whole
        if requeue:
            whole.requeue = True
        elif not whole.reject:
            whole.reject = True
            whole.reason = reason
        await whole.settled()


def acks(deliveries: list[Delivery]) -> tuple[list[Delivery], list[_Whole]]:
    """Ack ``deliveries``, parts and others, as far as that needs no broker frame: the
    deliveries to ack with :meth:`~aexec.transport.Transport.ack_many` (the others, and the
    whole deliveries whose last part this acks, none handed back or dead-lettered: one frame
    for them all instead of one each), and the wholes whose last part this acked that must
    be rejected (settle each)."""
    plain: list[Delivery] = []
    rejects: list[_Whole] = []
    for delivery in deliveries:
        if not isinstance(delivery, Part):
            plain.append(delivery)
            continue
        if delivery._done:
            continue
        delivery._done = True
        whole = delivery._whole
        whole.left -= 1
        if whole.left:
            continue
        if whole.requeue or whole.reject:
            rejects.append(whole)
        else:
            plain.append(whole.delivery)
    return plain, rejects


def split(delivery: Delivery, batch: messages.Completions) -> list[Part]:
    """A part for each completion of ``batch``, the message ``delivery`` carries."""
    whole = _Whole(delivery, len(batch.items))
    return [Part(whole, item) for item in batch.items]


__all__ = ["Part", "acks", "split"]
