"""The store port: runs, steps with their attempts, and the event log.

Adapters: :mod:`aexec.store.memory`, :mod:`aexec.store.sqlite` (embedded mode) and
:mod:`aexec.store.postgres`, chosen by URL with :func:`from_url`.  All pass
``tests/contract/test_store.py``.

:meth:`Store.create_run` logs the run's first event, ``run_submitted`` (data: ``priority``
and ``steps``, the number of steps).  Other writes go through :meth:`Store.append`: one
call is one transaction (group commit), and the store applies each event to the run and
step rows it concerns (:mod:`aexec.store.fold` is this table in Python):

======================  =====================================================
event                   row change
======================  =====================================================
run_submitted           none (logged by create_run)
run_started             run → running, started_at
step_dispatched         step → queued, attempts = attempt
step_started            step → running, started_at, worker (if that attempt is current)
step_retrying           step → retrying, error, failures + 1 (unless ``data["lost"]``)
step_waiting            step → retrying, no error (``aexec.again``: runs again at a time)
step_succeeded          step → succeeded, output, finished_at
step_failed             step → failed, error, finished_at, failures + 1 (idem)
step_skipped            step → skipped
step_cancelled          step → cancelled
run_succeeded           run → succeeded, result (the event's output), finished_at
run_failed / cancelled  run → failed / cancelled, error, finished_at
run_resumed             none
step_expanded           rows ``step[0..count-1]`` added, pending (a map expanded)
step_progress           none
step_log, step_output   none (what a step logged or printed, :mod:`aexec.telemetry`)
step_event              none
step_output_dropped     none
message_rejected        none
run_queued              none (the run waits for admission: ``data["position"]``)
======================  =====================================================

Step transitions are compare-and-set on the attempt: an event for an attempt older than
the step's current one changes no row (it is still logged).  A step's ``failures`` counts
its attempts that really failed: an attempt whose worker was lost, or whose dispatch was
not confirmed, is logged with ``"lost": true`` in its data and spends no retry.

Run leases let several coordinators share the unfinished runs and take over those of one
that crashed: a run is *claimable* while it is unfinished (pending or running) and has no
owner, no lease end, or a lease that ended.  :meth:`Store.acquire_runs` claims, the owner
calls :meth:`Store.renew_leases` well within the lease, and :meth:`Store.release_runs` hands
runs back at once on a clean shutdown.  A finished run keeps its owner and is never claimed.
Lease times are float seconds since the epoch: PostgreSQL reads its own clock (one clock
for every coordinator), the embedded stores read ``time.time()``.

Fencing: each run has an ``epoch``, 1 for the coordinator that creates it, one more each
time :meth:`Store.acquire_runs` claims it.  A coordinator passes the epochs it holds as a
:class:`Fence` to :meth:`Store.append` (and :meth:`Store.fail_run`): the store checks, in
the write's own transaction and after locking the run rows, that the writer still owns
every run of the batch at that epoch, and otherwise commits nothing and raises
:class:`~aexec.errors.LeaseLostError` naming the runs lost.  A coordinator whose lease
lapsed, however alive it is, can no longer change a run another one took over.

Cancel requests are durable: :meth:`Store.request_cancel` records one, for a run that exists
or not yet (its submission may still be queued), and keeps it until the run is deleted;
:meth:`Store.cancel_requests` tells which runs have one.  A coordinator checks them when it
starts a submitted run, takes a run over, and renews its leases, so a cancel is honoured
by whichever coordinator drives the run, however it was sent.

Webhook outbox: the decision to notify a webhook that a run ended is a
:class:`WebhookDelivery` row, written by :meth:`Store.append` (or :meth:`Store.fail_run`)
in the same transaction as the run's ending event, so that a coordinator crash neither
loses nor repeats it (a delivery's id is derived from its run, webhook and event: writing
it twice writes it once).  Deliverers take due deliveries with
:meth:`Store.claim_deliveries` (a lease each, so that two never send one at once and a
crashed deliverer's are taken again once the lease ends), and record each attempt with
:meth:`Store.settle_delivery`.  Times are ``time.time()`` of the caller.

Retention: :meth:`Store.finished_runs` finds runs that finished before a time and
:meth:`Store.delete_runs` deletes finished runs with their steps and events (and plans no
run uses any more); an unfinished run is never deleted.  Their objects are the caller's to
delete first (:func:`aexec.retention.prune` does both).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, Self

from aexec.errors import ConfigError
from aexec.events import Event
from aexec.limits import Rate
from aexec.plan import Plan
from aexec.types import ErrorInfo, RunStatus, StepStatus


# Not frozen, as no store changes them: two are built for every capped step, and a frozen
# dataclass takes twice as long to build.
@dataclass(slots=True)
class SlotFree:
    """Free the slots of caps held by step ``step`` of run ``run_id`` (by its attempts up to
    ``attempt``), or by every step of the run if ``step`` is None
    (:meth:`Store.sync_slots`)."""

    run_id: str
    step: str | None = None
    attempt: int = 0


@dataclass(slots=True)
class SlotTake:
    """Take one slot of each of ``caps`` (``(name, capacity)``) for ``attempt`` of step
    ``step`` of run ``run_id``, before it goes out (:meth:`Store.sync_slots`)."""

    run_id: str
    step: str
    attempt: int
    caps: tuple[tuple[str, int], ...]


@dataclass(slots=True)
class RunRecord:
    run_id: str
    pipeline: str
    plan_digest: str
    status: RunStatus = RunStatus.PENDING
    priority: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    result: bytes | None = None
    error: str | None = None
    owner: str | None = None  # the coordinator holding the run's lease
    lease_until: float | None = None  # when that lease ends (seconds since the epoch)
    epoch: int = 1  # how many times the run was claimed, its creation included (fencing)
    tags: dict[str, str] = field(default_factory=dict)  # labels to find runs by (check_tags)
    parent: str | None = None  # the run this one reruns, or is a child run of
    parent_step: str | None = None  # a child run's: the step of ``parent`` that runs it


@dataclass(slots=True)
class StepRecord:
    run_id: str
    key: str
    name: str
    queue: str
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    error: ErrorInfo | None = None
    output: bytes | None = None
    failures: int = 0  # attempts that failed (lost workers and unconfirmed dispatches aside)
    # The attempt whose step message the broker confirmed (0: none): the coordinators'
    # bookkeeping, not the step's state (records compare equal without it).
    confirmed: int = field(default=0, compare=False)


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # to be sent (again) at ``next_at``
    DELIVERED = "delivered"  # the endpoint answered 2xx
    FAILED = "failed"  # given up after the last attempt


@dataclass(slots=True)
class WebhookDelivery:
    """One webhook notification of one run's ending: ``body`` is the JSON sent, fixed when
    the run ended; ``url`` names the webhook (its secret stays in the configuration)."""

    id: str
    run_id: str
    url: str
    event: str
    body: bytes
    created_at: float
    next_at: float
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    finished_at: float | None = None
    last_status: int | None = None  # the HTTP status of the last attempt (None: no answer)
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Attempted:
    """The outcome of one attempt at a delivery, for :meth:`Store.settle_delivery`:
    ``next_at`` None ends it (delivered, or failed for good)."""

    delivered: bool
    ts: float
    next_at: float | None
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Fence:
    """What a fenced write requires: ``owner`` still owns each run it writes to, at the
    epoch ``epochs`` gives it (a run missing from ``epochs`` is not held)."""

    owner: str
    epochs: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Ownership:
    """Who drives a run now, as :meth:`Store.owners` reads it: ``live`` when its lease has
    not ended (by the store's clock)."""

    run_id: str
    status: RunStatus
    owner: str | None
    epoch: int
    live: bool


class Opened:
    """``async with`` for an adapter: ``open()`` on entry, ``close()`` on exit."""

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create_run(self, run: RunRecord, plan: Plan, *, notify: str | None = None) -> Event:
        """Record a new run, its pending steps, its plan (stored once per digest), and log
        the run's first event, ``run_submitted`` at ``run.created_at``, all in one
        transaction; return that event (its ``seq`` assigned).  ``notify``, the queue of
        the remote client that submitted the run, is kept in that event's data
        (``"notify"``): whichever coordinator drives the run sends the client its events.

        ``run.owner``, ``run.lease_until`` and ``run.epoch`` (1 unless set) are stored as
        given: a coordinator creating a run usually owns it from the start."""

    async def append(
        self,
        events: Sequence[Event],
        *,
        fence: Fence | None = None,
        confirmed: Sequence[tuple[str, str, int]] = (),
        outbox: Sequence[WebhookDelivery] = (),
        created: Sequence[tuple[RunRecord, Plan]] = (),
    ) -> None:
        """Log ``events`` and apply them to run and step rows, and add the ``outbox``
        deliveries (those whose id exists already are left as they are), in one
        transaction.

        ``created`` are new runs, recorded first in the same transaction as
        :meth:`create_run` records one, except that their ``run_submitted`` events (from
        :func:`aexec.store.rows.submitted`) are among ``events``: a coordinator creates a
        run in the commit of its first dispatches.  A run that exists already is a
        :class:`~aexec.errors.StoreError`, and nothing is committed.

        With ``fence``, only if ``fence.owner`` still owns every run of the batch at the
        epoch the fence gives it, checked after locking the run rows; otherwise nothing is
        committed and :class:`~aexec.errors.LeaseLostError` names the runs it lost.

        ``confirmed`` are ``(run_id, step key, attempt)`` whose step messages the broker
        confirmed, recorded in the same transaction (unfenced: it is a fact about the
        broker) as the step's ``confirmed`` attempt, for the attempt still current only."""

    async def fail_run(
        self,
        run_id: str,
        error: str,
        *,
        ts: float,
        fence: Fence | None = None,
        outbox: Sequence[WebhookDelivery] = (),
    ) -> Event | None:
        """End an unfinished run ``failed`` with ``error`` at ``ts``, logging its
        ``run_failed`` event (with the ``outbox`` deliveries), and nothing else: what a
        coordinator does to a run whose events the store refused for good.  Returns the
        event logged (its ``seq`` assigned), or None if the run had already finished (no
        delivery is added then).  Fenced as :meth:`append`."""

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run with this id, or with this unique id prefix; None if there is none."""

    async def list_runs(
        self,
        *,
        limit: int = 50,
        status: RunStatus | None = None,
        pipeline: str | None = None,
        tag: tuple[str, str] | None = None,
        offset: int = 0,
    ) -> list[RunRecord]:
        """Most recent first: up to ``limit`` runs after skipping ``offset``, only those
        with ``status``, of ``pipeline`` and tagged ``tag`` (key, value) when given (a page
        of the UI's runs list)."""

    async def step_counts(self, run_ids: Iterable[str]) -> dict[str, dict[StepStatus, int]]:
        """How many steps of each run of ``run_ids`` are in each status, in one read (a run
        that does not exist is left out; a status no step has is left out)."""

    async def last_seq(self, run_id: str) -> int:
        """The ``seq`` of the run's latest event, 0 if it has none (or does not exist):
        follow from there to see only what happens next."""

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        """In plan order."""

    async def get_events(
        self, run_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[Event]:
        """Events with ``seq > after``, oldest first."""

    async def get_plan(self, digest: str) -> Plan | None: ...

    def follow(self, run_id: str, *, after: int = 0) -> AsyncIterator[Event]:
        """The run's events with ``seq > after`` as they are recorded, oldest first.

        The iterator ends after the run's ending event (run_succeeded, run_failed or
        run_cancelled); for a run that already ended it yields the rest and ends.  A run
        that does not exist is a :class:`~aexec.errors.StoreError`; so is a store that
        fails (:class:`~aexec.errors.StoreUnavailableError` when transient: follow again
        with ``after`` set to the last seq seen).  Close the iterator when leaving it
        early (``contextlib.aclosing``), as any async generator.
        """

    async def acquire_runs(self, owner: str, lease: float, *, limit: int = 100) -> list[RunRecord]:
        """Claim up to ``limit`` claimable runs for ``owner`` until ``lease`` seconds from
        now, each at its next epoch, and return them as claimed, oldest first.

        Atomic: two callers, even in different processes, never claim the same run.
        """

    async def renew_leases(
        self, owner: str, lease: float, held: Mapping[str, int] | None = None
    ) -> set[str]:
        """Extend to ``lease`` seconds from now the lease of the unfinished runs of ``held``
        (run id → epoch) that ``owner`` still owns at that epoch, and return their ids;
        with ``held`` None, of every unfinished run ``owner`` owns.

        A run another owner has taken over (after this owner's lease ended) is neither
        renewed nor returned: its new owner drives it now.
        """

    async def owners(self, run_ids: Iterable[str]) -> dict[str, Ownership]:
        """Who owns each of ``run_ids`` that exists, in one read."""

    async def release_runs(self, owner: str, run_ids: Iterable[str] | None = None) -> None:
        """End at once ``owner``'s lease on those unfinished runs (all of them for None), so
        that another coordinator can claim them without waiting; the owner is kept."""

    async def request_cancel(self, run_id: str, reason: str | None = None) -> None:
        """Record that run ``run_id`` is to be cancelled (``reason``: why, for its
        ``run_cancelled`` event), whether the run exists yet or not; a run that has a
        request already keeps its first one.  Recording it cancels nothing by itself: the
        coordinator driving the run acts on it (:mod:`aexec.cancel`)."""

    async def cancel_requests(self, run_ids: Iterable[str]) -> dict[str, str | None]:
        """The runs of ``run_ids`` that have a cancel request, each with its reason."""

    async def finished_runs(
        self, before: float, *, limit: int = 100, after: tuple[float, str] | None = None
    ) -> list[RunRecord]:
        """Up to ``limit`` finished runs (succeeded, failed, cancelled) whose ``finished_at``
        is before ``before`` (seconds since the epoch), in ``(finished_at, run_id)`` order:
        the longest finished first.  ``after`` is the ``(finished_at, run_id)`` of the last
        run of the previous page."""

    async def delete_runs(self, run_ids: Iterable[str]) -> list[str]:
        """Delete those of ``run_ids`` that are finished, with their steps, events and
        cancel requests, webhook deliveries, and the plans no remaining run uses, in one
        transaction; return the ids deleted.  Unfinished and unknown runs are left as
        they are."""

    async def claim_deliveries(
        self, owner: str, lease: float, *, now: float, limit: int = 20
    ) -> list[WebhookDelivery]:
        """Take up to ``limit`` pending deliveries due by ``now`` whose lease is free or
        ended, for ``owner`` until ``now + lease``; soonest due first.  Atomic: two callers
        never take one delivery at once."""

    async def settle_delivery(self, delivery_id: str, owner: str, outcome: Attempted) -> bool:
        """Record an attempt at a delivery ``owner`` holds and free its lease: delivered,
        failed for good (``next_at`` None), or pending again at ``next_at``.  False (and
        nothing changed) if ``owner`` does not hold it any more."""

    async def get_deliveries(self, run_id: str) -> list[WebhookDelivery]:
        """The run's deliveries, oldest first."""

    async def next_delivery_at(self) -> float | None:
        """When a pending delivery can next be claimed: the soonest time at which one is
        due and its lease (if it has one) has ended; None if none is pending."""

    async def take_tokens(self, bucket: str, rate: Rate, want: int) -> tuple[int, float]:
        """Take up to ``want`` tokens from the token bucket ``bucket``, shared by every
        coordinator of this store: created full (``rate.count`` tokens), refilled at
        ``rate`` by the store's clock (:func:`aexec.limits.refill`).  Atomic.  Returns the
        tokens granted and, when the bucket has less than one left, the seconds until it
        has one (else 0)."""

    async def sync_slots(self, frees: Sequence[SlotFree], takes: Sequence[SlotTake]) -> list[bool]:
        """Free the slots of ``frees``, then take those of ``takes`` in their order, in one
        transaction (one per scheduler pass); a slot freed here is free for these takes.
        Returns whether each take got its slots.

        A free frees the slots held by step ``step`` of run ``run_id`` (by its attempts up
        to ``attempt``), or by every step of the run, and its waits, if ``step`` is None;
        freeing slots not held does nothing.  A take takes one slot of each of its caps
        (``(name, capacity)``, shared by every coordinator of this store) for ``attempt``
        of step ``step`` of run ``run_id``: all of them, or none if one is full (False);
        an attempt that holds its slots already takes none again (True), and a new one
        takes over its step's slots.  Takes of one cap are serialised across
        coordinators, and served in the order they asked: a step refused waits (recorded
        in the store, forgotten if not asked again within ``SLOT_WAIT_TTL``), and steps
        that ask later are refused while free slots are the turn of steps waiting longer.
        Slots held by runs that ended are freed first when a cap is full.  Retrying a
        call (a transient error) takes and frees nothing twice."""

    async def keep_slots(self, run_id: str, steps: Iterable[str]) -> list[str]:
        """Free the slots of run ``run_id`` but those of ``steps`` (a run taken over: its
        steps queued or running keep theirs); returns the steps that hold slots still,
        sorted."""

    async def slot_holders(self, gate: str) -> list[tuple[str, str, int]]:
        """The ``(run_id, step, attempt)`` holding slots of cap ``gate``, oldest first."""


def from_url(url: str) -> Store:
    """The store adapter for ``url``: ``memory://``, ``sqlite:///path`` or
    ``postgresql://...`` (``postgres://`` too); its module is imported only when chosen.
    Other schemes are a :class:`~aexec.errors.ConfigError`.  The store is not open yet."""
    scheme = url.split(":", 1)[0]
    if scheme == "memory":
        from aexec.store.memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        from aexec.store.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    if scheme in ("postgresql", "postgres"):
        from aexec.store.postgres import PostgresStore

        return PostgresStore.from_url(url)
    raise ConfigError(f"unsupported store URL scheme {scheme}://")
