"""The coordinator: many runs on one event loop, no thread per run, no polling tick.

Workers push completions, progress and heartbeats to the coordinator's reply queue.  The
coordinator's single scheduler task drains everything that has arrived (its
:class:`~aexec.inbox.Inbox`), applies it to each run's pure
:class:`~aexec.scheduling.RunState`, writes the resulting events to the store in ONE
transaction (group commit), acks the consumed messages, and only then publishes the newly
ready steps — so a step's dependents go out only after its completion is durable.  A pass
that makes no step ready may leave its events, and its replies unacked, to the next pass's
transaction (:mod:`aexec.deferral`).

Every write is fenced (:class:`~aexec.store.Fence`): the store commits a batch only while
this coordinator still owns its runs at the epochs it holds.  A run another coordinator
took over is let go of (its waiters and readers follow it in the store) and the rest of
the batch commits; nothing of the lost run is dispatched, and its replies are forwarded to
its owner (:mod:`aexec.strays`).  Poison is local: a run whose events the store refuses for
good ends ``failed`` with an error naming what was refused, and the other runs go on.
Leases and takeovers are in :mod:`aexec.takeover`.

Every run that ends is announced on the retained :data:`~aexec.wire.RUNS_ENDED_TOPIC`
once recorded, so that workers, present and future, skip its step messages still queued
(and stop a cancelled run's attempts).  No message it publishes is larger than
``max_message_size`` (:mod:`aexec.dispatch`, :mod:`aexec.claim`).

Its concerns that are not orchestration live beside it: admission of runs and the limits
and rate-limit tokens of steps (:mod:`aexec.throttle`), cancel requests
(:mod:`aexec.cancels`), what remote clients are sent (:mod:`aexec.feed`), the gateways of
foreign steps (:mod:`aexec.gateways`), recording (:mod:`aexec.recording`), leases and
takeovers (:mod:`aexec.takeover`), submissions and client requests
(:mod:`aexec.submissions`, :mod:`aexec.client_requests`).

Its tasks — the scheduler, the worker watchdog, the lease keeper, the timers and the
batches being published — belong to one :class:`~aexec.background.Background` group,
opened by ``async with`` and closed when it ends, or at once by :meth:`Coordinator.abort`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
)
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from aexec import claim, codec, messages, parts, tracing
from aexec.admission import DEFAULT_AGING, Candidate
from aexec.background import Background, Timers
from aexec.batch import ActiveRun, Batch, Creation, Epochs
from aexec.cancels import Cancels
from aexec.children import ChildRuns
from aexec.client_requests import ClientRequests
from aexec.config import MAX_MESSAGE_SIZE, Settings
from aexec.deferral import Deferral, default_delay
from aexec.dispatch import Dispatcher
from aexec.errors import (
    AexecError,
    CodecError,
    LeaseLostError,
    ObjectStoreError,
    PlanError,
    StoreError,
    StoreUnavailableError,
    TransportError,
)
from aexec.events import Event, EventKind
from aexec.feed import ClientFeed
from aexec.gateway import Gateway
from aexec.gateways import Gateways
from aexec.heap import Trimmer, releaser
from aexec.inbox import (
    CommitDue,
    ConfirmsDue,
    FlushDue,
    Handed,
    Inbox,
    Item,
    LetGo,
    MessageRejected,
    Reply,
    SlotsDue,
    Start,
    TokensDue,
    TokensGranted,
    UnfreedDue,
    WorkerLost,
)
from aexec.metrics import CoordinatorMetrics
from aexec.objects import ObjectStore
from aexec.plan import CHILD, Plan
from aexec.recording import Recorder
from aexec.rerun import reused_outputs
from aexec.scheduling import RunState
from aexec.store import Fence, RunRecord, Store, fold, rows
from aexec.strays import Stray, Strays
from aexec.stream import Subscriber, run_events
from aexec.submissions import Submissions
from aexec.takeover import Leases
from aexec.throttle import Throttle
from aexec.tracing import Tracing
from aexec.transport import Announcement, Delivery, Subscription, Transport, settle
from aexec.types import ErrorInfo, RunStatus, check_tags
from aexec.wire import (
    COORDINATOR_TOPIC,
    MAX_PRIORITY,
    RUNS_ENDED_TOPIC,
    check_run_id,
    reply_queue,
    step_queue,
)

if TYPE_CHECKING:
    from aexec.webhooks import Webhooks  # what it is given; an embedded run may have none

log = logging.getLogger(__name__)

T = TypeVar("T")

CONFIRM_DELAY = 0.05
"""Seconds a confirmed dispatch waits at most to be recorded, if no other commit takes it."""


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    """Durations in float seconds."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    reply_prefetch: int = 2000
    fail_fast: bool = False
    retry_backoff: float = 0.05  # first wait when the store or broker is unavailable
    retry_backoff_max: float = 5.0
    durable_replies: bool = True
    worker_timeout: float = 10.0  # a worker silent this long has lost its running steps
    lease: float = 15.0  # how long a run stays this coordinator's without a renewal
    adopt: bool = False  # take over the runs of coordinators whose leases ended (a service)
    durable_dispatch: bool = True  # False (embedded only): commits may trail dispatches
    flush_interval: float = 0.02  # with durable_dispatch False: the longest a commit trails
    # With durable_dispatch: the longest a pass that dispatches nothing may leave its
    # events uncommitted (and their replies unacked) for the next one that does (0: never;
    # from_settings picks the store's default, aexec.deferral.default_delay).
    commit_delay: float = 0.0
    max_message_size: int = MAX_MESSAGE_SIZE  # no message it publishes is larger
    limits: Mapping[str, int] = field(default_factory=dict)  # named limits (`uses=`)
    max_concurrent_runs: int | None = None  # runs started at once; the others wait, queued
    run_limits: Mapping[str, int] = field(default_factory=dict)  # per tag (aexec.admission)
    admission_aging: float = DEFAULT_AGING  # seconds of waiting worth one priority level
    trim_interval: float | None = 5.0  # freed memory goes back to the OS at most this often

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> CoordinatorConfig:
        """The coordinator knobs that ``settings`` carries (fail_fast, worker_timeout,
        lease, commit_delay, ...); ``overrides`` set any field."""
        values: dict[str, Any] = {
            "fail_fast": settings.fail_fast,
            "worker_timeout": settings.worker_timeout,
            "lease": settings.lease,
            "commit_delay": (
                default_delay(settings.store)
                if settings.commit_delay is None
                else settings.commit_delay
            ),
            "limits": dict(settings.limits),
            "max_concurrent_runs": settings.max_concurrent_runs,
            "run_limits": dict(settings.run_limits),
        }
        return cls(**(values | overrides))


class Coordinator:
    """Drives runs: publishes ready steps, awaits pushed completions, records everything.

    ``runs`` are the runs it drives now (by id); :attr:`leases` renews them and, for a
    service, takes over the runs of coordinators that stopped.  :attr:`stopped` resolves
    once the coordinator has stopped (with the failure that stopped it, if one did).
    ``objects`` is where it moves step inputs too large to travel in a message (without
    one, such a step fails)."""

    def __init__(
        self,
        transport: Transport,
        store: Store,
        config: CoordinatorConfig | None = None,
        *,
        objects: ObjectStore | None = None,
        on_queue: Callable[[str], Awaitable[None]] | None = None,
        metrics: CoordinatorMetrics | None = None,
        webhooks: Webhooks | None = None,
        gateways: Mapping[str, Gateway] | None = None,
    ) -> None:
        self.transport = transport
        self.store = store
        self.objects = objects
        self.config = config or CoordinatorConfig()
        self.gateways = dict(gateways or {})
        self.gateways[CHILD] = ChildRuns(self, self.config.worker_timeout / 4)
        self.metrics = metrics  # counts what is recorded, when given
        self.webhooks = webhooks  # decides the deliveries that ending runs make, when given
        self.reply_queue = reply_queue(self.config.id)
        self._on_queue = on_queue
        self.runs: dict[str, ActiveRun] = {}
        self.fence = Fence(self.config.id, Epochs(self.runs))
        self._inbox = Inbox()
        # The delivery of a handed-over completion: it came through no queue, so settling
        # it does nothing (as for the announcements children and gateways post).
        self._handed_over = Announcement(b"")
        self._gateways = Gateways(self.gateways, self._inbox.post)
        self._timers: Timers[Item] = Timers(self._inbox.post)
        self._declared: set[str] = set()
        self._background: Background | None = None
        self._scheduler: asyncio.Task[Any] | None = None
        self._closing = False
        self._periodic: tuple[asyncio.Task[Any], ...] = ()  # loops that start work unasked
        self._subscription: Subscription | None = None
        self._commands: Subscription | None = None
        self._unrecorded: list[Event] = []  # with durable_dispatch False: not yet committed
        self._unfinished: list[ActiveRun] = []
        # Dispatches the broker confirmed, recorded with the next commit (at the latest
        # CONFIRM_DELAY after the first of them: they wake no scheduler pass of their own).
        self._confirmed: list[tuple[str, str, int]] = []
        # New runs whose creation is committed by the next scheduler pass (with their first
        # dispatches), and those the pass in flight commits.
        self._creating: dict[str, ActiveRun] = {}
        self._creating_now: dict[str, ActiveRun] = {}
        self._confirm_due = False
        self._last_flush = time.monotonic()
        self._flush_armed = False
        self._deferral = Deferral(self.config.commit_delay)
        self._stopped: asyncio.Future[None] | None = None
        self.leases = Leases(self)
        self._cancels = Cancels(self)
        self.throttle = Throttle(self)  # admission of runs, limits of steps
        self._recorder = Recorder(self)
        self._dispatcher = Dispatcher(
            transport,
            self.config.id,
            self.reply_queue,
            self._inbox.post,
            delay=self.config.retry_backoff,
            max_delay=self.config.retry_backoff_max,
            objects=objects,
            max_message_size=self.config.max_message_size,
            confirmed=self._on_confirmed if self.config.durable_dispatch else None,
            gateways=self.gateways,
        )
        self._submissions = Submissions(self)
        self._requests = ClientRequests(self)
        self.feed = ClientFeed(store, transport, objects, self.config.max_message_size)
        self._strays = Strays(
            store,
            transport,
            self.config.id,
            self.config.retry_backoff,
            min(self.config.retry_backoff_max, self.config.lease / 3),
        )
        self.workers_seen: dict[str, float] = {}  # worker (instance) → monotonic time last heard
        interval = self.config.trim_interval
        self.heap = Trimmer(None if interval is None else releaser(), interval=interval or 0.0)
        self._tracing: Tracing | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Coordinator:
        self._tracing = tracing.load()
        await self.transport.declare_queue(
            self.reply_queue,
            durable=self.config.durable_replies,
            auto_delete=not self.config.durable_replies,
        )
        try:
            self._subscription = await self.transport.consume(
                self.reply_queue, self.on_reply, prefetch=self.config.reply_prefetch
            )
            self._commands = await self.transport.subscribe(
                COORDINATOR_TOPIC, self._cancels.on_command
            )
            background = Background(f"coordinator {self.config.id}", on_failure=self._failed)
            await background.__aenter__()
        except BaseException:
            await self._drop_subscriptions()
            raise
        self._background = background
        self._closing = False
        self._scheduler = background.start_loop(
            self._schedule_forever(), name=f"aexec-coordinator-{self.config.id}"
        )
        self._periodic = (
            background.start_loop(self._watch_workers(), name="aexec-worker-watchdog"),
            background.start_loop(self.leases.keep(), name="aexec-leases"),
            background.start_loop(self._timers.run(), name="aexec-timers"),
            background.start_loop(self.heap.run(), name="aexec-heap"),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop cleanly: take nothing new in, let the scheduler finish the pass under way
        and the steps already decided reach the broker (for at most 5 s in all), commit
        what trails, and delete the reply queue unless runs it drives are still in flight
        (another coordinator will want it)."""
        background = self._background
        if background is None:
            return  # never entered, or aborted
        try:
            for task in self._periodic:
                task.cancel()  # no retry, takeover or lost worker starts new work now
            await self._drop_subscriptions()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self._close_scheduler()
                    await background.drain()  # the steps already decided reach the broker
        finally:
            self._background = None
            try:
                await background.aclose()  # raises what stopped it, if a task failed
            finally:
                await self._gateways.close()
                self._resolve_stopped()
        if self._unrecorded or self._unfinished:
            try:
                await self._flush()
            except StoreError as exc:
                log.error(
                    "coordinator %s could not record its last events: %s", self.config.id, exc
                )
        if not self.runs and self.config.durable_replies:
            # Nothing can still answer to this coordinator: its reply queue may go.  With
            # runs in flight it stays, for whichever coordinator takes them over.
            with contextlib.suppress(TransportError):
                await self.transport.delete_queues([self.reply_queue])
        self._end_runs()

    async def _close_scheduler(self) -> None:
        """Let the scheduler finish what the inbox holds and return."""
        scheduler = self._scheduler
        if scheduler is None or scheduler.done():
            return
        self._closing = True
        self._inbox.post(FlushDue())  # wakes it if it waits
        await asyncio.wait([scheduler])

    async def abort(self) -> None:
        """Stop at once, as a crash would: every task is cancelled wherever it is, and the
        subscriptions are dropped, so unacked deliveries go back to the broker.  Nothing is
        flushed, no lease is released, the reply queue stays: the runs this coordinator
        drove remain its own in the store until their leases lapse and another coordinator
        takes them over.  Local waiters of those runs are cancelled.  Leaving the
        ``async with`` afterwards does nothing."""
        background, self._background = self._background, None
        if background is None:
            return
        try:
            await background.aclose()
        finally:
            await self._drop_subscriptions()
            await self._gateways.close()
            self._end_runs()
            self._resolve_stopped()

    @property
    def stopped(self) -> asyncio.Future[None]:
        """Resolves once the coordinator has stopped: to None after a clean exit or
        :meth:`abort`, to an :class:`~aexec.errors.AexecError` naming the failure after a
        background task failed (a bug) and stopped it."""
        if self._stopped is None:
            self._stopped = asyncio.get_running_loop().create_future()
        return self._stopped

    async def until(self, stop: asyncio.Event) -> None:
        """Return once ``stop`` is set; if the coordinator stops first, raise why (an
        :class:`~aexec.errors.AexecError`: it failed, or it was stopped elsewhere)."""
        stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        stopped: asyncio.Future[Any] = self.stopped
        try:
            await asyncio.wait([stopping, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not stop.is_set():
            stopped.result()  # raises the failure that stopped it
            raise AexecError(f"coordinator {self.config.id} stopped")

    def _resolve_stopped(self, error: AexecError | None = None) -> None:
        stopped = self.stopped
        if stopped.done():
            return
        if error is None:
            stopped.set_result(None)
        else:
            stopped.set_exception(error)
            stopped.exception()  # whoever awaits it gets it; nobody awaiting is no error

    async def _failed(self, failure: Exception) -> None:
        """A background task failed (a bug): the group has stopped; stop as :meth:`abort`
        does, and let the runs' waiters know why."""
        error = AexecError(f"coordinator {self.config.id} stopped: {failure!r}")
        await self._drop_subscriptions()
        await self._gateways.close()
        self._end_runs(error)
        self._resolve_stopped(error)

    async def _drop_subscriptions(self) -> None:
        """Consume nothing more; what was delivered and not acked goes back to its queue."""
        await self.stop_accepting()
        subscriptions = [self._commands, self._subscription]
        self._commands = self._subscription = None
        for subscription in subscriptions:
            if subscription is not None:
                await subscription.cancel()
        await self.leases.drop_subscriptions()

    async def open_gateways(self, plan: Plan) -> None:
        """Start the gateways that the foreign steps of ``plan`` (Celery tasks) go through
        (:meth:`Gateways.open_for <aexec.gateways.Gateways.open_for>`)."""
        await self._gateways.open_for(plan)

    def _end_runs(self, error: AexecError | None = None) -> None:
        """Stop driving every run: end their event streams, and cancel their waiters (or
        fail them with ``error``)."""
        runs = list(self.runs.values())
        self.runs.clear()
        self._creating.clear()
        self._creating_now.clear()
        for run in runs:
            for subscriber in run.subscribers:
                subscriber.close()
            creation, run.creation = run.creation, None
            if creation is not None and not creation.committed.done():
                _fail(creation.committed, error or AexecError("the coordinator stopped"))
            if not run.done.done():
                if error is None:
                    run.done.cancel()
                else:
                    _fail(run.done, error)

    def start_work(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` in the coordinator's task group; an
        :class:`~aexec.errors.AexecError` (and ``work`` closed) if it is stopping."""
        self._require_running().start_work(work)

    def _require_running(self) -> Background:
        background = self._background
        if background is None or not background.running:
            state = "stopped" if background is not None else "not running (use `async with`)"
            raise AexecError(f"the coordinator is {state}")
        return background

    @property
    def active_runs(self) -> list[ActiveRun]:
        """The runs this coordinator drives now."""
        return list(self.runs.values())

    def post(self, item: Item) -> None:
        """Hand ``item`` to the scheduler."""
        self._inbox.post(item)

    def after(self, delay: float, item: Item) -> None:
        """Hand ``item`` to the scheduler ``delay`` seconds from now."""
        self._timers.after(delay, item)

    async def lose(self, run: ActiveRun) -> None:
        """Let go of ``run``: another coordinator took it over.  Its readers follow it on
        in the store; its waiters get a :class:`~aexec.errors.LeaseLostError`."""
        if self.runs.get(run.run_id) is not run:
            return
        log.warning("coordinator %s lost run %s to another coordinator", self.config.id, run.run_id)
        del self.runs[run.run_id]
        self._inbox.post(LetGo(run.run_id))
        self.throttle.admit_after([run.run_id])
        for subscriber in run.subscribers:
            subscriber.close(taken_over=True)
        if not run.done.done():
            error = LeaseLostError(
                f"run {run.run_id} was taken over by another coordinator", [run.run_id]
            )
            _fail(run.done, error)
        await self.leases.release_adopted(run.run_id)

    async def lose_all(self, run_ids: Iterable[str]) -> None:
        """Let go of these runs (those driven here): see :meth:`lose`."""
        for run_id in sorted(run_ids):
            run = self.runs.get(run_id)
            if run is not None:
                await self.lose(run)

    # -- submitting ------------------------------------------------------------------------

    async def accept_submissions(self) -> None:
        """Serve runs submitted by library clients through the broker
        (:mod:`aexec.submissions`), and their clients' requests (:mod:`aexec.client_requests`)."""
        await self._requests.accept()
        await self._submissions.accept()

    async def stop_accepting(self) -> None:
        await self._submissions.stop()
        await self._requests.stop()

    def drive(self, run: ActiveRun) -> None:
        """Drive ``run`` from now on (it was just created or taken over); a cancel heard
        for it meanwhile applies."""
        self.runs[run.run_id] = run
        self._cancels.heard_for(run)

    async def submit(
        self,
        plan: Plan,
        *,
        priority: int = 0,
        run_id: str | None = None,
        notify: str | None = None,
        tags: Mapping[str, str] | None = None,
        parent: str | None = None,
        from_failure: bool = False,
        parent_step: str | None = None,
    ) -> ActiveRun:
        """Record a new run of ``plan`` and start it (or queue it, see
        :mod:`aexec.admission`); returns once it is durable (while the store is
        unavailable, it waits).

        ``run_id`` (default: a new one) must pass :func:`~aexec.wire.check_run_id`, else a
        :class:`~aexec.errors.CodecError`.  ``notify``: a remote client's queue, sent every
        event of the run from its run_submitted on.  ``tags`` (checked by
        :func:`~aexec.types.check_tags`) label the run; ``parent`` is the run it reruns,
        whose succeeded steps it reuses with ``from_failure`` (:mod:`aexec.rerun`), or,
        with ``parent_step``, the run whose step ``parent_step`` runs this one as its child
        (:mod:`aexec.children`)."""
        if run_id is not None:
            check_run_id(run_id)
        return await self.create(
            plan,
            priority,
            run_id,
            notify,
            retry=True,
            tags=_labels(tags),
            parent=parent,
            from_failure=from_failure,
            parent_step=parent_step,
        )

    def driven(self, run_id: str) -> asyncio.Future[RunStatus] | None:
        """The ending of run ``run_id`` if this coordinator drives it, else None."""
        run = self.runs.get(run_id)
        return None if run is None else run.done

    async def create(
        self,
        plan: Plan,
        priority: int,
        run_id: str | None,
        notify: str | None,
        *,
        retry: bool = False,
        tags: Mapping[str, str] | None = None,
        parent: str | None = None,
        from_failure: bool = False,
        parent_step: str | None = None,
    ) -> ActiveRun:
        """:meth:`submit` without checking ``run_id``; with ``retry`` False, a store or
        broker that is unavailable now raises at once (a submission from the broker goes
        back to its queue)."""
        self._require_running()
        given = run_id is not None
        run_id = run_id or uuid.uuid4().hex
        priority = min(max(int(priority), 0), MAX_PRIORITY)
        now = time.time()
        record = RunRecord(
            run_id,
            plan.pipeline,
            plan.digest,
            RunStatus.PENDING,
            priority,
            plan.parameters,
            created_at=now,
            owner=self.config.id,
            lease_until=now + self.config.lease,
            epoch=1,
            tags=dict(tags or {}),
            parent=parent,
            parent_step=parent_step,
        )
        await self.open_gateways(plan)
        for queue in plan.queues:
            await self.declare(queue)
        if (
            retry
            and not given
            and not from_failure
            and self._creates_with_dispatch(plan, parent_step)
        ):
            return await self._create_with_dispatch(record, plan, notify)

        async def create() -> Event:
            return await self.store.create_run(record, plan, notify=notify)

        async def reused() -> dict[int, bytes]:
            return await reused_outputs(self.store, parent, plan) if parent else {}

        reuse = {}
        if from_failure:
            reuse = await (self.with_retry("read the run to rerun", reused) if retry else reused())
        submitted = await (self.with_retry("create run", create) if retry else create())
        state = RunState(plan, fail_fast=self.config.fail_fast)
        if reuse:
            # A crash before this commits leaves a run that runs every step: slower, not wrong.
            events = [
                Event(
                    EventKind.STEP_SUCCEEDED,
                    run_id,
                    now,
                    plan.steps[i].key,
                    0,
                    {"reused_from": parent},
                    output,
                )
                for i, output in sorted(reuse.items())
            ]
            fence = Fence(self.config.id, {run_id: record.epoch})

            async def record_reused() -> None:
                await self.store.append(events, fence=fence)

            await (
                self.with_retry("record reused outputs", record_reused)
                if retry
                else record_reused()
            )
            state.reuse(reuse)
        run = ActiveRun(run_id, plan, priority, state, record.epoch)
        run.record = record
        run.notify = notify
        self.trace(run)
        await self.notify(run, [submitted])  # before the run starts: the client sees it first
        if given:
            await self._cancels.recorded_for(run)  # cancelled before it was created?
        self.drive(run)
        if run.cancel is not None:
            self._inbox.post(Start(run_id))  # it is cancelled at once, not queued first
        elif parent_step is not None:
            self.throttle.start_now(Candidate(run_id, priority, now, record.tags))
        else:
            self.throttle.start_or_queue(Candidate(run_id, priority, now, record.tags))
        return run

    def _creates_with_dispatch(self, plan: Plan, parent_step: str | None) -> bool:
        """Whether a new run of ``plan`` is created in the transaction of its first
        dispatches (one commit before its first step leaves instead of two): with durable
        dispatch, for a run started at once (no admission control, not a child run) whose
        steps take no slots (a slot is taken in the store before its run's first commit)."""
        return (
            self.config.durable_dispatch
            and parent_step is None
            and self.throttle.admission is None
            and all(spec.limits is None for spec in plan.steps)
        )

    async def _create_with_dispatch(
        self, record: RunRecord, plan: Plan, notify: str | None
    ) -> ActiveRun:
        """Start a new run whose rows the scheduler pass that starts it commits with its
        first dispatches; return once that commit is done.  If it cannot be (the store
        refused the run, the coordinator stopped), nothing of the run was recorded or
        sent, and the error is raised to the caller."""
        run = ActiveRun(
            record.run_id,
            plan,
            record.priority,
            RunState(plan, fail_fast=self.config.fail_fast),
            record.epoch,
        )
        run.record = record
        run.notify = notify
        committed = asyncio.get_running_loop().create_future()
        run.creation = Creation(
            replace(record), plan, rows.submitted(record, plan, notify), committed
        )
        self.trace(run)
        self.drive(run)
        self._creating[run.run_id] = run
        self._inbox.post(Start(run.run_id))
        await asyncio.shield(committed)
        return run

    def _created(self, run_ids: set[str]) -> None:
        """The pass in flight committed the creation of its new runs but ``run_ids``."""
        creating, self._creating_now = self._creating_now, {}
        for run_id, run in creating.items():
            creation = run.creation
            if run_id in run_ids or creation is None:
                continue
            run.creation = None
            if not creation.committed.done():
                creation.committed.set_result(None)

    def refuse_creation(self, run_id: str, error: Exception) -> None:
        """The run ``run_id``, created in the pass in flight, cannot be created (``error``):
        forget it (nothing of it was recorded or sent) and raise ``error`` to its submitter."""
        run = self._creating_now.pop(run_id, None) or self._creating.pop(run_id, None)
        if run is None or self.runs.get(run_id) is not run:
            return
        del self.runs[run_id]
        self._inbox.post(LetGo(run_id))
        creation, run.creation = run.creation, None
        if creation is not None and not creation.committed.done():
            _fail(creation.committed, error)
        if not run.done.done():
            _fail(run.done, error)

    def trace(self, run: ActiveRun, *, resumed: bool = False) -> None:
        """Give ``run`` a span (when tracing is on), ended when this coordinator is done
        with the run: it ended, or was let go of."""
        tracing = self._tracing
        if tracing is None:
            return
        span = tracing.start_run(run.run_id, run.plan.pipeline, resumed=resumed)
        run.trace = span.traceparent

        def ended(done: asyncio.Future[RunStatus]) -> None:
            status = "lost" if done.cancelled() or done.exception() else str(done.result())
            tracing.end_run(span, status)

        run.done.add_done_callback(ended)

    async def adopt(self, record: RunRecord) -> ActiveRun | None:
        """Take over a run claimed at ``record.epoch`` (see :meth:`Leases.adopt
        <aexec.takeover.Leases.adopt>`)."""
        return await self.leases.adopt(record)

    async def release(self) -> None:
        """Hand this coordinator's unfinished runs over at once (a clean shutdown), once
        what its scheduler passes held back is committed (:mod:`aexec.deferral`; for 5 s
        at most: what is still held then goes to the next driver as replies)."""
        deferral = self._deferral
        if deferral and self.running:
            deferral.expire()
            self._inbox.post(CommitDue())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await deferral.emptied()
        await self.leases.release()

    async def cancel(self, run_id: str, reason: str | None = None) -> None:
        """Cancel a run, durably: the request is recorded in the store, so that whichever
        coordinator drives the run, takes it over or starts it later honours it.  A run
        driven here is cancelled at once; for one driven elsewhere the request is
        broadcast, so that its coordinator acts at once whatever this one's store does
        (it also finds the request at its next lease renewal, if it missed the broadcast).
        Then the request is recorded: a store error is raised (the request may not be
        kept: send it again).  Workers hear of the end once it is recorded
        (:data:`~aexec.wire.RUNS_ENDED_TOPIC`)."""
        await self._cancels.cancel(run_id, reason)

    async def cancel_requested(self, run_ids: Iterable[str]) -> None:
        """Cancel those of ``run_ids`` driven here that have a cancel request in the store
        and are not being cancelled yet."""
        await self._cancels.requested(run_ids)

    def message_rejected(self, body: bytes, reason: str, destination: str) -> None:
        """A message was refused at ``destination`` for ``reason`` (its signature, as
        :class:`~aexec.transport.signed.SignedTransport` tells): if its unverified ``body``
        names a run this coordinator drives, record a ``message_rejected`` event on it,
        saying which kind of message, where and why.  Nothing else is taken from the body."""
        try:
            msg = messages.decode(body)
        except CodecError:
            return
        # Coalesced completions name a run each: each is told (as the kind they travel as).
        for named in msg.items if isinstance(msg, messages.Completions) else [msg]:
            run_id = getattr(named, "run_id", None)
            if not isinstance(run_id, str) or run_id not in self.runs:
                continue
            step = getattr(named, "step_key", None)
            attempt = getattr(named, "attempt", 0)
            self._inbox.post(MessageRejected(run_id, reason, destination, msg.KIND, step, attempt))

    def events(self, run_id: str) -> AsyncIterator[Event]:
        """The run's events from the beginning: history from the store, then live ones (a
        bounded buffer per reader: one that falls behind reads the store); a run taken over
        by another coordinator is followed on in the store until it ends."""
        return run_events(self.store, run_id, self._subscribe, self._unsubscribe)

    def _subscribe(self, run_id: str) -> Subscriber | None:
        run = self.runs.get(run_id)
        if run is None:
            return None
        subscriber = Subscriber()
        run.subscribers.append(subscriber)
        return subscriber

    def _unsubscribe(self, run_id: str, subscriber: Subscriber) -> None:
        run = self.runs.get(run_id)
        if run is not None and subscriber in run.subscribers:
            run.subscribers.remove(subscriber)

    # -- inbox -----------------------------------------------------------------------------

    async def on_reply(self, delivery: Delivery) -> None:
        """The handler of the reply queues this coordinator consumes."""
        self._inbox.post(Reply(delivery))

    def hand_over(self, reply_to: str, completion: messages.Completion) -> bool:
        """Take ``completion``, addressed to ``reply_to``, from a worker in this process (the
        embedded mode) as it is: applied and recorded as if it had come through the reply
        queue, without encoding, queueing and decoding it.  False, and nothing done, unless
        ``reply_to`` is this coordinator's reply queue, it runs, and it drives the run: the
        worker then publishes the completion as over a broker."""
        if (
            reply_to != self.reply_queue
            or self._closing
            or self._background is None
            or completion.run_id not in self.runs
        ):
            return False
        self._inbox.post(Handed(completion))
        return True

    @property
    def queues(self) -> list[str]:
        """The step queues it has published to (declared)."""
        return sorted(self._declared)

    @property
    def running(self) -> bool:
        """True from entering until it stops (or a failure stops it)."""
        background = self._background
        return background is not None and background.running

    async def declare(self, queue: str) -> None:
        """Declare the step queue ``queue`` (once)."""
        if queue in self._declared:
            return
        await self.transport.declare_queue(step_queue(queue))
        self._declared.add(queue)
        if self._on_queue is not None:
            await self._on_queue(queue)

    # -- the scheduler ---------------------------------------------------------------------

    async def _schedule_forever(self) -> None:
        inbox = self._inbox
        delay = self.config.retry_backoff
        while True:
            await inbox.wait()
            while inbox and self._background is not None:
                batch = Batch(self.runs, self.config.id, self.workers_seen, self.throttle.limiter)
                try:
                    await self._schedule_once(batch)
                except Exception:  # a bug must not stop every run this coordinator drives
                    log.exception("coordinator %s: a scheduler pass failed", self.config.id)
                    await self._recover(batch)
                    # The next pass may hit the same bug: not in a tight loop.
                    delay = await self._recorder.backoff(
                        "a scheduler pass", RuntimeError("a bug"), delay
                    )
                else:
                    delay = self.config.retry_backoff
            if self._closing or self._background is None:
                return

    async def _schedule_once(self, batch: Batch) -> None:
        strays: list[Stray] = []
        confirms_due = False
        # Everything that arrived until now is one batch: one store transaction.  New runs
        # posted their Start before this take: their rows go in that transaction too.
        creating = self._creating_now = self._creating
        self._creating = {}
        for item in self._inbox.take():
            match item:
                case Reply():
                    await self._take_reply(batch, item.delivery, strays)
                case Handed():
                    await self._take_handed(batch, item.completion, strays)
                case FlushDue() | TokensDue():
                    pass  # it woke the scheduler: what is due is decided below
                case ConfirmsDue():
                    self._confirm_due = False  # the next confirm arms the timer again
                    confirms_due = True
                case CommitDue():
                    self._deferral.armed = False  # what is held is due: see below
                case LetGo():
                    self.throttle.let_go(batch, item.run_id)
                case TokensGranted():
                    self.throttle.granted(batch, item)
                case UnfreedDue():
                    pass  # it woke the scheduler: the slots are freed below
                case SlotsDue():
                    batch.slots_due(item)
                case _:
                    batch.command(item)
        self.throttle.request_tokens()
        # The slots of caps: steps go out (and their dispatch is recorded) once the store
        # gave them theirs; slots freed here are free for these takes and for others'.
        await self.throttle.sync_slots(batch)
        if self.config.durable_dispatch:
            deferral = self._deferral
            created = [c for c in (run.creation for run in creating.values()) if c is not None]
            if created:
                batch.events[:0] = [c.submitted for c in created]  # each run's first event
            if deferral.hold(batch, commit=self._closing or confirms_due or bool(created)):
                # Nothing this pass decided waits for its events: the next pass that does
                # commits them first (aexec.deferral).
                if not deferral.armed:
                    deferral.armed = True
                    self._timers.after(deferral.remaining(), CommitDue())
                await self._dispatch(batch, set(), strays)
                return
            deferral.release_into(batch)
            batch.confirmed, self._confirmed = self._confirmed, []
            # A step's dependents go out only once its completion is committed.
            lost: set[str] = set()
            if batch.events or batch.confirmed:
                lost, failed = await self._recorder.commit(
                    batch.events, batch.confirmed, [(c.record, c.plan) for c in created]
                )
                batch.discard(lost | failed)
                self._created(lost | failed)
            await self._dispatch(batch, lost, strays)
            await self._recorded(batch.events, batch.finished)
            self.throttle.ended(batch)
            return
        # Embedded: nothing outlives this process, so commits may trail the dispatches and
        # several waves share one transaction.
        await self._dispatch(batch, set(), strays)
        self.throttle.ended(batch)  # no other coordinator: nothing to lose meanwhile
        self._unrecorded.extend(batch.events)
        self._unfinished.extend(batch.finished)
        due = time.monotonic() - self._last_flush >= self.config.flush_interval
        if batch.finished or due or len(self._unrecorded) >= 20_000:
            await self._flush()
        elif self._unrecorded and not self._flush_armed:
            self._flush_armed = True
            self._timers.after(self.config.flush_interval, FlushDue())

    async def _take_reply(self, batch: Batch, delivery: Delivery, strays: list[Stray]) -> None:
        """Apply a reply to ``batch``, or set it aside in ``strays`` if it is about a run
        this coordinator does not drive; a malformed or misplaced one is dead-lettered."""
        try:
            msg = messages.decode(delivery.body)
        except CodecError as exc:
            log.error("coordinator %s dead-lettered a malformed reply: %s", self.config.id, exc)
            await settle(delivery, reject=True, reason=f"malformed: {exc}")
            return
        match msg:
            case messages.Completions():  # coalesced by a worker: each as if it came alone
                for part in parts.split(delivery, msg):
                    await self._take_report(batch, part, part.msg, strays)
            case messages.Completion() | messages.Progress() | messages.AttemptLost():
                await self._take_report(batch, delivery, msg, strays)
            case messages.Output():
                # Telemetry: what is about runs this coordinator does not drive is ignored.
                batch.output(msg)
                batch.acks.append((delivery, None))
            case messages.Heartbeat():
                batch.heartbeat(msg)
                batch.acks.append((delivery, None))
                elsewhere = [entry for entry in msg.running if entry[0] not in self.runs]
                if elsewhere:
                    strays.append(
                        Stray(messages.Heartbeat(msg.worker, msg.ts, elsewhere, msg.instance))
                    )
            case _:
                log.error(
                    "coordinator %s dead-lettered a %s message on its reply queue",
                    self.config.id,
                    type(msg).__name__,
                )
                await settle(delivery, reject=True, reason=f"a {msg.KIND} message on a reply queue")

    async def _take_handed(
        self, batch: Batch, completion: messages.Completion, strays: list[Stray]
    ) -> None:
        """Apply a completion handed over in the process; one about a run this coordinator
        no longer drives (it ended meanwhile) goes the ordinary way, through the reply
        queue, to be settled as any stray reply is."""
        if completion.run_id in self.runs:
            await self._take_report(batch, self._handed_over, completion, strays)
            return
        with contextlib.suppress(AexecError):  # stopping: nobody would read it
            self._require_running().start_work(self._publish_reply(completion))

    async def _publish_reply(self, completion: messages.Completion) -> None:
        try:
            await self.transport.publish(self.reply_queue, completion.encode())
        except AexecError as exc:
            log.warning(
                "coordinator %s dropped the completion of step %s (attempt %d) of run %s: %s",
                self.config.id,
                completion.step_key,
                completion.attempt,
                completion.run_id,
                exc,
            )

    async def _take_report(
        self,
        batch: Batch,
        delivery: Delivery,
        msg: messages.Completion | messages.Progress | messages.AttemptLost,
        strays: list[Stray],
    ) -> None:
        """Apply a report about one attempt; acked with the batch, or a stray."""
        if isinstance(msg, messages.Completion):
            await self._load_list(msg)
        batch.reply(msg)  # a progress report is news of its worker, whatever the run
        if msg.run_id in self.runs:
            batch.acks.append((delivery, msg))
        else:
            strays.append(Stray(msg, delivery))

    async def _load_list(self, msg: messages.Completion) -> None:
        """A step whose output a map runs over put that list in the object store: load it
        for the map to expand (it fails, saying so, if that cannot be done)."""
        output = msg.output
        if not output or output[0] not in codec.EXT_HEADS:
            return  # inline: the common case, decided from one byte
        run = self.runs.get(msg.run_id)
        index = None if run is None else run.plan.index.get(msg.step_key)
        if run is None or index is None or index not in run.plan.map_sources:
            return
        try:
            data = await claim.load_list(self.objects, output)
        except ObjectStoreError as exc:
            log.error("run %s: cannot load the list of %s: %s", msg.run_id, msg.step_key, exc)
            return
        if data is not None:
            run.state.lists[index] = data

    async def end_failed(self, run_id: str, event: Event | None) -> None:
        """The store refused the events of run ``run_id`` for good and ended it failed
        (``event``, its run_failed, if that could be logged): stop driving it."""
        run = self.runs.pop(run_id, None)
        if run is None:
            return
        self._inbox.post(LetGo(run_id))
        self.throttle.admit_after([run_id])
        run.state.halt(RunStatus.FAILED)
        if event is not None:
            for subscriber in run.subscribers:
                subscriber.put(event)
            await self.notify(run, [event])
        for subscriber in run.subscribers:
            subscriber.close()
        await self.leases.release_adopted(run_id)
        if not run.done.done():
            run.done.set_result(RunStatus.FAILED)
        await self._announce_ended([(run_id, RunStatus.FAILED)])

    async def _flush(self) -> None:
        events, self._unrecorded = self._unrecorded, []
        finished, self._unfinished = self._unfinished, []
        self._flush_armed = False
        self._last_flush = time.monotonic()
        if events:
            lost, failed = await self._recorder.commit(events)
            dropped = lost | failed
            if dropped:
                events = [e for e in events if e.run_id not in dropped]
                finished = [r for r in finished if r.run_id not in dropped]
        await self._recorded(events, finished)

    async def _dispatch(self, batch: Batch, lost: set[str], strays: list[Stray]) -> None:
        """Publish the batch's steps, settle its deliveries (those of runs just lost are
        strays now), arm its retry timers, and start settling the strays."""
        if batch.outgoing:
            # The next steps go out before the acks, and the scheduler does not wait for the
            # broker's confirms (a round trip) before taking the next completions in.
            self._require_running().start_work(self._dispatcher.send(batch.outgoing))
        acks, batch.acks = batch.acks, []
        done: list[Delivery] = []
        for delivery, msg in acks:
            if msg is not None and msg.run_id in lost:
                strays.append(Stray(msg, delivery))
            else:
                done.append(delivery)
        if done:
            # A coalesced reply is acked once all its completions are: with the others.
            done, rejects = parts.acks(done)
            try:  # one frame for many, where the broker allows
                if done:
                    await self.transport.ack_many(done)
            except TransportError as exc:
                log.info("could not ack replies (the broker gives them back): %s", exc)
            for whole in rejects:
                try:
                    await whole.settle()
                except TransportError as exc:
                    log.info("could not settle a reply (the broker gives it back): %s", exc)
        for timer in batch.retries:
            self._timers.after(timer.delay, timer.due)
        if strays:
            with contextlib.suppress(AexecError):  # stopping: unacked, they go back anyway
                self._require_running().start_work(self._strays.handle(strays))

    def _on_confirmed(self, steps: list[tuple[str, str, int]]) -> None:
        """Confirmed dispatches: recorded with the next commit, or when the confirm timer
        fires.  One timer at a time, whatever the passes take meanwhile: confirms that
        arrive while it runs are recorded when it fires, within ``CONFIRM_DELAY`` (a timer
        per confirmed batch cost a scheduler pass each when steps go out a few at a time,
        as under a concurrency limit)."""
        self._confirmed.extend(steps)
        if not self._confirm_due:
            self._confirm_due = True
            self._timers.after(CONFIRM_DELAY, ConfirmsDue())

    async def _recorded(self, events: list[Event], finished: list[ActiveRun]) -> None:
        """Events are in the store: count them, tell their subscribers; finish the runs
        that ended."""
        if self.metrics is not None:
            self.metrics.recorded(events, self.runs)
        notify: dict[str, list[Event]] = {}
        for event in events:
            target = self.runs.get(event.run_id)
            if target is None:
                continue
            if event.step is None and target.record is not None:
                fold.apply_to_run(target.record, event)  # its waiter reads no store
            for subscriber in target.subscribers:
                subscriber.put(event)
            if target.notify is not None:
                notify.setdefault(target.run_id, []).append(event)
        await self._notify_all(notify)
        for run in finished:
            self.runs.pop(run.run_id, None)
            await self.leases.release_adopted(run.run_id)
            for subscriber in run.subscribers:
                subscriber.close()
            if not run.done.done():
                run.done.set_result(run.state.run_status)
        if finished:
            self.heap.ended(len(finished), len(self.runs))
            self.throttle.admit_after([r.run_id for r in finished])
            await self._announce_ended([(r.run_id, r.state.run_status) for r in finished])
            if self._gateways:
                cancelled = [r for r in finished if r.status is RunStatus.CANCELLED]
                self._gateways.revoke(cancelled, self.start_work)

    async def _notify_all(self, notify: dict[str, list[Event]]) -> None:
        """Send each run its events of one batch, the runs concurrently: every send waits
        for the broker's confirm, and one batch can touch thousands of runs, so sending
        them one after the other made a batch take one round trip per run.  A run's own
        messages still go in order (one :meth:`notify` each)."""
        if len(notify) == 1:
            [(run_id, events)] = notify.items()
            await self.notify(self.runs[run_id], events)
        elif notify:
            sends = (self.notify(self.runs[run_id], events) for run_id, events in notify.items())
            _raise_first(await asyncio.gather(*sends, return_exceptions=True))

    async def _announce_ended(self, runs: list[tuple[str, RunStatus]]) -> None:
        """Tell every worker, present and future, that these runs ended (they are recorded):
        their step messages still queued are skipped, a cancelled run's attempts stop."""
        now = time.time()
        bodies = [messages.RunEnded(run_id, status.value, now).encode() for run_id, status in runs]

        async def announce() -> None:  # all again on a failure: a worker skips duplicates
            sends = (self.transport.announce(RUNS_ENDED_TOPIC, body) for body in bodies)
            _raise_first(await asyncio.gather(*sends, return_exceptions=True))

        background = self._background
        if background is not None and background.running:
            background.start_work(self.with_retry("announce ended runs", announce))
            return
        try:  # stopping: one try
            await announce()
        except TransportError as exc:
            log.warning("coordinator %s could not announce ended runs: %s", self.config.id, exc)

    async def _recover(self, batch: Batch) -> None:
        """A scheduler pass failed (a bug): rebuild the runs it touched from the store (what
        it decided may or may not be recorded), and hand its deliveries back (dead-letter
        those handed back once already: they may be what the bug chokes on).  So are the
        runs and deliveries of passes whose commit was deferred (aexec.deferral)."""
        touched = batch.touched | {e.run_id for e in batch.events} | self._deferral.run_ids
        batch.acks[:0] = self._deferral.drop()
        for run_id in list(self._creating_now):  # not created: nothing of them was recorded
            self.refuse_creation(run_id, AexecError("the run could not be created (a bug)"))
        for run_id in sorted(touched):
            run = self.runs.get(run_id)
            if run is None:
                continue
            try:
                await self.leases.reload(run)
            except (StoreError, TransportError, ObjectStoreError) as exc:
                log.error("coordinator %s cannot reload run %s: %s", self.config.id, run_id, exc)
                await self.lose(run)
                with contextlib.suppress(StoreError):
                    await self.store.release_runs(self.config.id, [run_id])
        acks, batch.acks = batch.acks, []
        for delivery, _ in acks:
            if delivery.redelivered:
                await settle(delivery, reject=True, reason="a scheduler pass failed on it twice")
            else:
                await settle(delivery, requeue=True)

    async def notify(self, run: ActiveRun, events: list[Event]) -> None:
        """Send a remote client its run's events (:meth:`ClientFeed.notify
        <aexec.feed.ClientFeed.notify>`)."""
        await self.feed.notify(run, events)

    async def send_events(self, run_id: str, queue: str) -> None:
        """Send the events of run ``run_id`` recorded so far to a client's ``queue``
        (:meth:`ClientFeed.send_events <aexec.feed.ClientFeed.send_events>`)."""
        await self.feed.send_events(run_id, queue)

    async def _watch_workers(self) -> None:
        """Re-dispatch the steps of worker instances whose heartbeats lapsed."""
        timeout = self.config.worker_timeout
        while True:
            await asyncio.sleep(timeout / 4)
            now = time.monotonic()
            lapsed = {w for w, seen in self.workers_seen.items() if now - seen > timeout}
            if not lapsed:
                continue
            for worker in lapsed:
                del self.workers_seen[worker]
            # Workers heartbeat only while they run steps: one that went idle is forgotten
            # quietly, one that fell silent with steps on it has lost them.
            lost = [
                WorkerLost(run.run_id, index, run.state.attempts[index], worker)
                for run in self.runs.values()
                for index, worker in run.running_on.items()
                if worker in lapsed
            ]
            for worker in sorted({command.worker for command in lost}):
                log.warning("worker %s stopped heartbeating; re-dispatching its steps", worker)
            for command in lost:
                self._inbox.post(command)

    async def with_retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, again while its backend is unavailable (a run stalls, it is never
        lost); an error that will not change is raised."""
        delay = self.config.retry_backoff
        while True:
            try:
                return await call()
            except (StoreUnavailableError, TransportError) as exc:
                delay = await self._recorder.backoff(what, exc, delay)


def _labels(tags: Mapping[str, str] | None) -> dict[str, str]:
    """``tags`` checked (:func:`~aexec.types.check_tags`); a :class:`PlanError` if bad."""
    try:
        return check_tags(dict(tags or {}))
    except (ValueError, TypeError) as exc:
        raise PlanError(str(exc)) from None


def step_errors(run: ActiveRun) -> dict[str, ErrorInfo]:
    return {run.plan.steps[i].key: err for i, err in run.state.errors.items()}


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    """Fail ``future`` with ``error``; nobody awaiting it is no error."""
    future.set_exception(error)
    future.exception()  # marks it retrieved: no "exception was never retrieved" at exit


def _raise_first(results: list[Any]) -> None:
    """Raise the first exception among ``gather(..., return_exceptions=True)`` results (all
    of them have finished: nothing is left running)."""
    for result in results:
        if isinstance(result, BaseException):
            raise result
