"""How a coordinator records its events: fenced, run by run when the store refuses a batch,
and never retrying forever on an error that will not change.

:meth:`Recorder.commit` appends a batch in one fenced transaction
(:class:`~aexec.store.Fence`).  Runs another coordinator took over
(:class:`~aexec.errors.LeaseLostError`) are let go of and the rest of the batch commits.
While the store is unavailable (:class:`~aexec.errors.StoreUnavailableError`) it waits and
tries again: a run stalls, it is never lost.  A batch refused for good is recorded run by
run, so that one run's poison — a value the store will never take — fails that run only:
it ends ``failed`` (:meth:`~aexec.store.Store.fail_run`) with a one-line error naming what
was refused, and every other run goes on.

With webhooks configured, the deliveries that a batch's ending events decide
(:meth:`~aexec.webhooks.Webhooks.outbox`) are written in the batch's own transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aexec.errors import LeaseLostError, StoreError, StoreUnavailableError
from aexec.events import Event
from aexec.plan import Plan
from aexec.store import RunRecord, WebhookDelivery
from aexec.store.rows import failed_event

if TYPE_CHECKING:
    from aexec.coordinator import Coordinator

log = logging.getLogger(__name__)


class Recorder:
    """Commits the events of ``coordinator``'s runs to its store."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    async def commit(
        self,
        events: list[Event],
        confirmed: Sequence[tuple[str, str, int]] = (),
        created: Sequence[tuple[RunRecord, Plan]] = (),
    ) -> tuple[set[str], set[str]]:
        """Record ``events``, fenced, the dispatches the broker ``confirmed`` and the new
        runs ``created`` (whose first events are among ``events``); return the runs whose
        events were not recorded: ``(lost, failed)``, runs taken over by another
        coordinator (let go of) and runs whose events the store refused for good (ended
        failed, or, for a new run, not created: its submitter gets the error).
        Confirmations go with the events, or are dropped with a batch the store refused (a
        takeover then dispatches those steps again)."""
        coordinator = self._coordinator
        lost: set[str] = set()
        not_created: set[str] = set()
        delay = coordinator.config.retry_backoff
        outbox = self._outbox(events)
        while events or confirmed:
            try:
                await coordinator.store.append(
                    events,
                    fence=coordinator.fence,
                    confirmed=confirmed,
                    outbox=outbox,
                    created=created,
                )
                self._recorded(outbox)
                break
            except LeaseLostError as exc:
                lost |= exc.run_ids
                await coordinator.lose_all(exc.run_ids)
                events = [e for e in events if e.run_id not in exc.run_ids]
                outbox = [d for d in outbox if d.run_id not in exc.run_ids]
            except StoreUnavailableError as exc:
                delay = await self.backoff("record events", exc, delay)
            except StoreError as exc:
                if created:  # the new runs alone first: one of them may be what is refused
                    apart, refused = await self._create_apart(events, created)
                    created = ()
                    events = [e for e in events if e.run_id not in apart]
                    outbox = [d for d in outbox if d.run_id not in apart]
                    not_created |= refused
                    continue
                more, failed = await self._commit_apart(events, exc)
                return lost | more, failed | not_created
        return lost, not_created

    async def _create_apart(
        self, events: list[Event], created: Sequence[tuple[RunRecord, Plan]]
    ) -> tuple[set[str], set[str]]:
        """A batch with new runs was refused: create each new run with its own events in a
        transaction of its own; return the runs so done, and those of them refused (their
        submitters get the store's error)."""
        coordinator = self._coordinator
        done: set[str] = set()
        refused: set[str] = set()
        for record, plan in created:
            run_id = record.run_id
            of_run = [e for e in events if e.run_id == run_id]
            outbox = self._outbox(of_run)
            delay = coordinator.config.retry_backoff
            while True:
                try:
                    await coordinator.store.append(
                        of_run, fence=coordinator.fence, outbox=outbox, created=[(record, plan)]
                    )
                    self._recorded(outbox)
                except StoreUnavailableError as exc:
                    delay = await self.backoff("create a run", exc, delay)
                    continue
                except StoreError as exc:
                    log.error(
                        "coordinator %s could not create run %s: %s",
                        coordinator.config.id,
                        run_id,
                        exc,
                    )
                    coordinator.refuse_creation(run_id, exc)
                    refused.add(run_id)
                break
            done.add(run_id)
        return done, refused

    async def _commit_apart(
        self, events: list[Event], refused: StoreError
    ) -> tuple[set[str], set[str]]:
        """The store refused a batch for good: record it run by run."""
        coordinator = self._coordinator
        log.error(
            "coordinator %s: the store refused a batch, recording its runs one by one: %s",
            coordinator.config.id,
            refused,
        )
        by_run: dict[str, list[Event]] = {}
        for event in events:
            by_run.setdefault(event.run_id, []).append(event)
        lost: set[str] = set()
        failed: set[str] = set()
        for run_id, of_run in by_run.items():
            delay = coordinator.config.retry_backoff
            outbox = self._outbox(of_run)
            while True:
                try:
                    await coordinator.store.append(of_run, fence=coordinator.fence, outbox=outbox)
                    self._recorded(outbox)
                except LeaseLostError:
                    lost.add(run_id)
                    await coordinator.lose_all({run_id})
                except StoreUnavailableError as exc:
                    delay = await self.backoff("record events", exc, delay)
                    continue
                except StoreError as exc:
                    if await self._fail(run_id, of_run, exc):
                        failed.add(run_id)
                    else:
                        lost.add(run_id)
                break
        return lost, failed

    async def _fail(self, run_id: str, events: list[Event], exc: StoreError) -> bool:
        """End run ``run_id`` failed, its ``events`` having been refused for good; False if
        it turned out to be taken over meanwhile (and is let go of)."""
        coordinator = self._coordinator
        error = refusal(events, exc)
        log.error("coordinator %s fails run %s: %s", coordinator.config.id, run_id, error)
        delay = coordinator.config.retry_backoff
        event: Event | None = None
        ts = time.time()
        outbox = self._outbox([failed_event(run_id, error, ts)])
        while True:
            try:
                event = await coordinator.store.fail_run(
                    run_id, error, ts=ts, fence=coordinator.fence, outbox=outbox
                )
                self._recorded(outbox if event is not None else [])
            except LeaseLostError:
                await coordinator.lose_all({run_id})
                return False
            except StoreUnavailableError as failure:
                delay = await self.backoff("fail a run", failure, delay)
                continue
            except StoreError as failure:
                log.error(
                    "coordinator %s cannot fail run %s either: %s",
                    coordinator.config.id,
                    run_id,
                    failure,
                )
            break
        await coordinator.end_failed(run_id, event)
        return True

    def _outbox(self, events: list[Event]) -> list[WebhookDelivery]:
        webhooks = self._coordinator.webhooks
        return [] if webhooks is None else webhooks.outbox(events, self._coordinator.runs)

    def _recorded(self, outbox: list[WebhookDelivery]) -> None:
        webhooks = self._coordinator.webhooks
        if outbox and webhooks is not None:
            webhooks.wake()

    async def backoff(self, what: str, exc: Exception, delay: float) -> float:
        """Log that ``what`` failed, wait ``delay`` seconds, and return the next delay."""
        config = self._coordinator.config
        log.warning("coordinator %s: %s failed, retrying in %.2fs: %s", config.id, what, delay, exc)
        await asyncio.sleep(delay)
        return min(delay * 2, config.retry_backoff_max)


def one_line(text: str) -> str:
    """``text`` on one line, control characters spelled out (it may come from the data at
    fault)."""
    flat = " ".join(text.split())
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in flat)


def refusal(events: list[Event], exc: StoreError) -> str:
    """The one-line error of a run whose events the store refused: what, and why."""
    shown = [f"{e.kind}" + (f" of step {e.step!r}" if e.step else "") for e in events[:3]]
    more = f" and {len(events) - 3} more" if len(events) > 3 else ""
    text = f"the run store refused this run's events ({', '.join(shown)}{more}): {exc}"
    return one_line(text)[:1000]


__all__ = ["Recorder", "one_line", "refusal"]
