"""In-memory run store with exactly the SQLite store's semantics, for tests and demos.

It mirrors the database rather than holding live objects: params and event data go
through JSON as they would into a column (a tuple comes back as a list, a datetime as its
text), readers get copies, a batch that fails changes nothing, and the data outlives
``close()`` and a later ``open()``.
"""

from __future__ import annotations

import bisect
import json
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from aexec.errors import StoreError
from aexec.events import Event, EventKind
from aexec.limits import Rate
from aexec.plan import Plan
from aexec.store import (
    Attempted,
    DeliveryStatus,
    Fence,
    Opened,
    Ownership,
    RunRecord,
    SlotFree,
    SlotTake,
    StepRecord,
    WebhookDelivery,
    fold,
)
from aexec.store import rows as shared
from aexec.store.follow import TicketWatch, Wakeups, follow_log
from aexec.types import RunStatus, StepStatus


@dataclass(frozen=True, slots=True)
class _LoggedEvent:
    """An event as the log keeps it: no output, data as JSON text (None when empty)."""

    seq: int
    kind: EventKind
    ts: float
    step: str | None
    attempt: int
    data: str | None


@dataclass(slots=True)
class _Run:
    record: RunRecord  # its ``params`` stay empty: the JSON text is kept in ``params``
    params: str
    order: int
    steps: dict[str, StepRecord]  # in plan order
    events: list[_LoggedEvent] = field(default_factory=list)


@dataclass(slots=True)
class _Delivery:
    record: WebhookDelivery
    owner: str | None = None
    lease_until: float | None = None

    def claimable(self, now: float) -> bool:
        return (
            self.record.status is DeliveryStatus.PENDING
            and self.record.next_at <= now
            and (self.lease_until is None or self.lease_until <= now)
        )


class MemoryStore(Opened):
    """The run store in a few dictionaries; nothing is shared between instances."""

    def __init__(self) -> None:
        self._open = False
        self._plans: dict[str, bytes] = {}
        self._runs: dict[str, _Run] = {}
        self._last_seq = 0
        self._wakeups = Wakeups()
        self._cancel_requests: dict[str, str | None] = {}  # run id → reason
        self._deliveries: dict[str, _Delivery] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # name → (tokens, updated_at)
        # cap → (run_id, step) holding one of its slots → (attempt, when it took it)
        self._slots: dict[str, dict[tuple[str, str], tuple[int, float]]] = {}
        # cap → (run_id, step) refused a slot → [since, seen_at]
        self._waits: dict[str, dict[tuple[str, str], list[float]]] = {}
        # The caps each run took slots of (some may be freed since): what a free looks at.
        self._run_gates: dict[str, set[str]] = {}

    def __repr__(self) -> str:
        return f"MemoryStore(runs={len(self._runs)})"

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False
        self._wakeups.notify_all()  # followers wake up and find the store closed

    async def create_run(self, run: RunRecord, plan: Plan, *, notify: str | None = None) -> Event:
        self._check_open()
        params = self._creatable(run, plan)
        self._insert_run(run, plan, params)
        submitted = shared.submitted(run, plan, notify)
        submitted.seq = self._last_seq + 1
        logged = _LoggedEvent(
            submitted.seq, submitted.kind, submitted.ts, None, 0, json.dumps(submitted.data)
        )
        self._runs[run.run_id].events.append(logged)
        self._last_seq = submitted.seq
        return submitted

    def _creatable(self, run: RunRecord, plan: Plan) -> str:
        """The params of a run to create; a StoreError if it cannot be."""
        if run.plan_digest != plan.digest:
            raise StoreError(
                f"run {run.run_id!r} names plan {run.plan_digest!r}, not the plan given"
            )
        params = shared.dump_json(run.params, "run params")
        if run.run_id in self._runs:
            raise StoreError(f"run {run.run_id!r} already exists")
        return params

    def _insert_run(self, run: RunRecord, plan: Plan, params: str) -> None:
        self._add(self._new_run(run, plan, params, len(self._runs)), plan)

    @staticmethod
    def _new_run(run: RunRecord, plan: Plan, params: str, order: int) -> _Run:
        steps = {
            s.key: StepRecord(run_id=run.run_id, key=s.key, name=s.name, queue=s.queue)
            for s in plan.steps
        }
        return _Run(replace(run, params={}, tags=dict(run.tags)), params, order, steps, [])

    def _add(self, run: _Run, plan: Plan) -> None:
        if plan.digest not in self._plans:
            self._plans[plan.digest] = plan.to_bytes()
        self._runs[run.record.run_id] = run

    async def append(
        self,
        events: Sequence[Event],
        *,
        fence: Fence | None = None,
        confirmed: Sequence[tuple[str, str, int]] = (),
        outbox: Sequence[WebhookDelivery] = (),
        created: Sequence[tuple[RunRecord, Plan]] = (),
    ) -> None:
        self._check_open()
        # Everything that can fail is checked before anything changes, as a rollback would.
        new: dict[str, tuple[_Run, Plan]] = {}
        for record, plan in created:
            params = self._creatable(record, plan)
            if record.run_id in new:
                raise StoreError(f"run {record.run_id!r} already exists")
            order = len(self._runs) + len(new)
            new[record.run_id] = (self._new_run(record, plan, params, order), plan)
        logged_data = [
            shared.dump_json(e.data, f"{e.kind} event data") if e.data else None for e in events
        ]
        runs: list[_Run] = []
        for event in events:
            run = self._runs.get(event.run_id)
            if run is None and event.run_id in new:
                run = new[event.run_id][0]
            if run is None:
                raise StoreError(f"cannot append events: unknown run {event.run_id!r}")
            runs.append(run)
        if fence is not None:
            self._check_fence(fence, {run.record.run_id: run for run in runs}.values())
        for delivery in outbox:
            if delivery.run_id not in self._runs and delivery.run_id not in new:
                raise StoreError(f"cannot add a delivery: unknown run {delivery.run_id!r}")
        for run, plan in new.values():
            self._add(run, plan)
        for delivery in outbox:
            if delivery.id not in self._deliveries:
                self._deliveries[delivery.id] = _Delivery(replace(delivery))
        first = self._last_seq + 1
        for i, (event, run, data) in enumerate(zip(events, runs, logged_data, strict=True)):
            run.events.append(
                _LoggedEvent(first + i, event.kind, event.ts, event.step, event.attempt, data)
            )
            fold.apply(run.record, run.steps, event)
        self._last_seq = first + len(events) - 1
        for i, event in enumerate(events):
            event.seq = first + i
        for run_id in dict.fromkeys(e.run_id for e in events):
            self._wakeups.notify(run_id)
        for run_id, key, attempt in confirmed:
            row = self._runs[run_id].steps.get(key) if run_id in self._runs else None
            if row is not None and row.attempts == attempt and row.confirmed < attempt:
                row.confirmed = attempt

    async def fail_run(
        self,
        run_id: str,
        error: str,
        *,
        ts: float,
        fence: Fence | None = None,
        outbox: Sequence[WebhookDelivery] = (),
    ) -> Event | None:
        self._check_open()
        run = self._runs.get(run_id)
        if run is None:
            raise StoreError(f"cannot fail run {run_id!r}: no such run")
        if fence is not None:
            self._check_fence(fence, [run])
        if run.record.status.finished:
            return None
        event = shared.failed_event(run_id, error, ts)
        await self.append([event], outbox=outbox)
        return event

    def _check_fence(self, fence: Fence, runs: Iterable[_Run]) -> None:
        owners = [(r.record.run_id, r.record.owner, r.record.epoch) for r in runs]
        lost = shared.fence_lost(fence, owners)
        if lost:
            raise shared.lease_lost(lost)

    async def get_run(self, run_id: str) -> RunRecord | None:
        self._check_open()
        run = self._runs.get(run_id)
        if run is None and len(run_id) >= 4:
            matches = [rid for rid in self._runs if rid.startswith(run_id)]
            if len(matches) > 1:
                raise StoreError(f"run id prefix {run_id!r} is ambiguous")
            if matches:
                run = self._runs[matches[0]]
        return None if run is None else _copy_run(run)

    async def list_runs(
        self,
        *,
        limit: int = 50,
        status: RunStatus | None = None,
        pipeline: str | None = None,
        tag: tuple[str, str] | None = None,
        offset: int = 0,
    ) -> list[RunRecord]:
        self._check_open()
        shared.check_limit(limit)
        shared.check_offset(offset)
        runs = [
            r
            for r in self._runs.values()
            if (status is None or r.record.status == status)
            and (pipeline is None or r.record.pipeline == pipeline)
            and (tag is None or r.record.tags.get(tag[0]) == tag[1])
        ]
        runs.sort(key=lambda r: (r.record.created_at, r.order), reverse=True)
        return [_copy_run(r) for r in runs[offset : offset + limit]]

    async def step_counts(self, run_ids: Iterable[str]) -> dict[str, dict[StepStatus, int]]:
        self._check_open()
        counts: dict[str, dict[StepStatus, int]] = {}
        for run_id in run_ids:
            run = self._runs.get(run_id)
            if run is None:
                continue
            by_status = counts[run_id] = {}
            for step in run.steps.values():
                by_status[step.status] = by_status.get(step.status, 0) + 1
        return counts

    async def last_seq(self, run_id: str) -> int:
        self._check_open()
        run = self._runs.get(run_id)
        return run.events[-1].seq if run is not None and run.events else 0

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        self._check_open()
        run = self._runs.get(run_id)
        return [] if run is None else [replace(s) for s in run.steps.values()]

    async def get_events(
        self, run_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[Event]:
        self._check_open()
        if limit is not None:
            shared.check_limit(limit)
        run = self._runs.get(run_id)
        if run is None:
            return []
        start = bisect.bisect_right(run.events, after, key=lambda e: e.seq)
        stop = len(run.events) if limit is None else start + limit
        return [
            Event(
                kind=e.kind,
                run_id=run_id,
                ts=e.ts,
                step=e.step,
                attempt=e.attempt,
                data={} if e.data is None else json.loads(e.data),
                seq=e.seq,
            )
            for e in run.events[start:stop]
        ]

    async def get_plan(self, digest: str) -> Plan | None:
        self._check_open()
        data = self._plans.get(digest)
        return None if data is None else Plan.from_bytes(data)

    async def follow(self, run_id: str, *, after: int = 0) -> AsyncIterator[Event]:
        async def read(last: int) -> list[Event]:
            return await self.get_events(run_id, after=last)

        async def finished() -> bool:
            self._check_open()
            run = self._runs.get(run_id)
            if run is None:
                raise StoreError(f"cannot follow run {run_id!r}: no such run")
            return run.record.status.finished

        watch = TicketWatch(self._wakeups, run_id)
        async for event in follow_log(watch, read, finished, after=after):
            yield event

    # -- leases -----------------------------------------------------------------------------

    async def acquire_runs(self, owner: str, lease: float, *, limit: int = 100) -> list[RunRecord]:
        self._check_open()
        shared.check_lease(lease)
        shared.check_limit(limit)
        now = time.time()
        claimable = [
            run
            for run in self._runs.values()
            if not run.record.status.finished
            and (
                run.record.owner is None
                or run.record.lease_until is None
                or run.record.lease_until < now
            )
        ]
        claimed = sorted(claimable, key=lambda r: (r.record.created_at, r.order))[:limit]
        for run in claimed:
            run.record.owner, run.record.lease_until = owner, now + lease
            run.record.epoch += 1
        return [_copy_run(run) for run in claimed]

    async def renew_leases(
        self, owner: str, lease: float, held: Mapping[str, int] | None = None
    ) -> set[str]:
        self._check_open()
        shared.check_lease(lease)
        until = time.time() + lease
        owned = [
            run
            for run in self._owned(owner)
            if held is None or held.get(run.record.run_id) == run.record.epoch
        ]
        for run in owned:
            run.record.lease_until = until
        return {run.record.run_id for run in owned}

    async def owners(self, run_ids: Iterable[str]) -> dict[str, Ownership]:
        self._check_open()
        now = time.time()
        found: dict[str, Ownership] = {}
        for run_id in run_ids:
            run = self._runs.get(run_id)
            if run is not None:
                record = run.record
                live = record.lease_until is not None and record.lease_until >= now
                found[run_id] = Ownership(run_id, record.status, record.owner, record.epoch, live)
        return found

    async def release_runs(self, owner: str, run_ids: Iterable[str] | None = None) -> None:
        self._check_open()
        chosen = None if run_ids is None else set(run_ids)
        for run in self._owned(owner):
            if chosen is None or run.record.run_id in chosen:
                run.record.lease_until = 0.0

    # -- retention --------------------------------------------------------------------------

    async def request_cancel(self, run_id: str, reason: str | None = None) -> None:
        self._check_open()
        self._cancel_requests.setdefault(run_id, reason)

    async def cancel_requests(self, run_ids: Iterable[str]) -> dict[str, str | None]:
        self._check_open()
        requests = self._cancel_requests
        return {run_id: requests[run_id] for run_id in run_ids if run_id in requests}

    async def finished_runs(
        self, before: float, *, limit: int = 100, after: tuple[float, str] | None = None
    ) -> list[RunRecord]:
        self._check_open()
        shared.check_limit(limit)
        done = sorted(
            (run.record.finished_at, run.record.run_id)
            for run in self._runs.values()
            if run.record.status.finished
            and run.record.finished_at is not None
            and run.record.finished_at < before
        )
        if after is not None:
            done = done[bisect.bisect_right(done, after) :]
        return [_copy_run(self._runs[run_id]) for _, run_id in done[:limit]]

    async def delete_runs(self, run_ids: Iterable[str]) -> list[str]:
        self._check_open()
        deleted = [
            run_id
            for run_id in dict.fromkeys(run_ids)
            if (run := self._runs.get(run_id)) is not None and run.record.status.finished
        ]
        digests = {self._runs[run_id].record.plan_digest for run_id in deleted}
        for run_id in deleted:
            del self._runs[run_id]
            self._cancel_requests.pop(run_id, None)
        gone = set(deleted)
        for delivery_id in [k for k, d in self._deliveries.items() if d.record.run_id in gone]:
            del self._deliveries[delivery_id]
        used = {run.record.plan_digest for run in self._runs.values()}
        for digest in digests - used:
            self._plans.pop(digest, None)
        return deleted

    async def claim_deliveries(
        self, owner: str, lease: float, *, now: float, limit: int = 20
    ) -> list[WebhookDelivery]:
        self._check_open()
        due = sorted(
            (d for d in self._deliveries.values() if d.claimable(now)),
            key=lambda d: (d.record.next_at, d.record.id),
        )[:limit]
        for delivery in due:
            delivery.owner, delivery.lease_until = owner, now + lease
        return [replace(d.record) for d in due]

    async def settle_delivery(self, delivery_id: str, owner: str, outcome: Attempted) -> bool:
        self._check_open()
        delivery = self._deliveries.get(delivery_id)
        if (
            delivery is None
            or delivery.owner != owner
            or delivery.record.status is not DeliveryStatus.PENDING
        ):
            return False
        delivery.record = shared.attempted(delivery.record, outcome)
        delivery.owner = delivery.lease_until = None
        return True

    async def get_deliveries(self, run_id: str) -> list[WebhookDelivery]:
        self._check_open()
        found = [replace(d.record) for d in self._deliveries.values() if d.record.run_id == run_id]
        return sorted(found, key=lambda d: (d.created_at, d.id))

    async def next_delivery_at(self) -> float | None:
        self._check_open()
        pending = [
            max(d.record.next_at, d.lease_until or 0.0)
            for d in self._deliveries.values()
            if d.record.status is DeliveryStatus.PENDING
        ]
        return min(pending, default=None)

    def _owned(self, owner: str) -> list[_Run]:
        return [
            run
            for run in self._runs.values()
            if run.record.owner == owner and not run.record.status.finished
        ]

    async def take_tokens(self, bucket: str, rate: Rate, want: int) -> tuple[int, float]:
        self._check_open()
        now = time.time()
        tokens, granted, retry_in = shared.take_from_bucket(
            self._buckets.get(bucket), now, rate, want
        )
        self._buckets[bucket] = (tokens, now)
        return granted, retry_in

    async def sync_slots(self, frees: Sequence[SlotFree], takes: Sequence[SlotTake]) -> list[bool]:
        self._check_open()
        for free in frees:
            self._free_slots(free)
        now = time.time()
        return [self._take_slots(take, now) for take in takes]

    def _take_slots(self, take: SlotTake, now: float) -> bool:
        run_id = take.run_id
        key = (run_id, take.step)
        needed: list[str] = []
        for gate, capacity in take.caps:
            held = self._slots.get(gate)
            if held is None:
                held = self._slots[gate] = {}
            if key not in held:
                waits = self._waits.get(gate)
                mine = None if not waits else waits.get(key)
                since = now if mine is None else mine[0]
                ahead = 0
                if waits:  # steps refused earlier, and still asking, go first
                    fresh = now - shared.SLOT_WAIT_TTL
                    ahead = sum(
                        1
                        for k, (s, seen) in waits.items()
                        if k != key and seen >= fresh and s < since
                    )
                if len(held) >= capacity:  # full: slots of ended runs go first
                    for ended in [k for k in held if self._ended(k[0])]:
                        del held[ended]
                if len(held) + ahead >= capacity:  # full, or the free slots are others' turn
                    if waits is None:
                        waits = self._waits[gate] = {}
                    fresh = now - shared.SLOT_WAIT_TTL
                    for stale in [k for k, (_, seen) in waits.items() if seen < fresh]:
                        del waits[stale]
                    waits[key] = [since, now]
                    return False
            needed.append(gate)
        for gate in needed:
            waits = self._waits.get(gate)
            if waits:
                waits.pop(key, None)
            held = self._slots[gate]
            earlier = held.get(key)  # its slot passes to the new attempt
            held[key] = (take.attempt, now if earlier is None else earlier[1])
        taken = self._run_gates.get(run_id)
        if taken is None:
            self._run_gates[run_id] = set(needed)
        else:
            taken.update(needed)
        return True

    def _ended(self, run_id: str) -> bool:
        run = self._runs.get(run_id)
        return run is None or run.record.status.finished

    def _free_slots(self, free: SlotFree) -> None:
        run_id, step = free.run_id, free.step
        if step is None:
            for waits in self._waits.values():
                for key in [k for k in waits if k[0] == run_id]:
                    del waits[key]
            for gate in self._run_gates.pop(run_id, ()):
                held = self._slots[gate]
                for key in [k for k in held if k[0] == run_id]:
                    del held[key]
            return
        key = (run_id, step)
        for gate in self._run_gates.get(run_id, ()):
            held = self._slots[gate]
            holder = held.get(key)
            if holder is not None and holder[0] <= free.attempt:
                del held[key]

    async def keep_slots(self, run_id: str, steps: Iterable[str]) -> list[str]:
        self._check_open()
        keep = set(steps)
        kept: set[str] = set()
        for held in self._slots.values():
            for key in [k for k in held if k[0] == run_id]:
                if key[1] in keep:
                    kept.add(key[1])
                else:
                    del held[key]
        return sorted(kept)

    async def slot_holders(self, gate: str) -> list[tuple[str, str, int]]:
        self._check_open()
        held = self._slots.get(gate, {})
        found = sorted(
            (taken_at, run_id, step, attempt)
            for (run_id, step), (attempt, taken_at) in held.items()
        )
        return [(run_id, step, attempt) for _, run_id, step, attempt in found]

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError(f"{self!r} is not open")


def _copy_run(run: _Run) -> RunRecord:
    return replace(run.record, params=json.loads(run.params), tags=dict(run.record.tags))
