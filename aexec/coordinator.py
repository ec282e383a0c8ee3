"""The coordinator: many runs on one event loop, no thread per run, no polling tick.

Workers push completions, progress and heartbeats to the coordinator's reply queue.  The
coordinator's single scheduler task drains everything that has arrived (its
:class:`~aexec.inbox.Inbox`), applies it to each run's pure
:class:`~aexec.scheduling.RunState`, writes the resulting events to the store in ONE
transaction (group commit), acks the consumed messages, and only then publishes the newly
ready steps — so a step's dependents go out only after its completion is durable.

Its tasks — the scheduler, the worker watchdog, the lease keeper, the timers and the
batches being published — belong to one :class:`~aexec.background.Background` group,
opened by ``async with`` and closed when it ends, or at once by :meth:`Coordinator.abort`.

No message it publishes is larger than ``max_message_size``: a step message that would be
has its largest inline inputs moved to the object store first (:mod:`aexec.claim`), or
fails its step with a clear error when that cannot be done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aexec import claim, messages
from aexec.background import Background, Timers
from aexec.batch import ActiveRun, Batch, Outgoing
from aexec.config import MAX_MESSAGE_SIZE, Settings
from aexec.errors import (
    AexecError,
    CodecError,
    ObjectStoreError,
    PlanError,
    PublishError,
    StoreError,
    StoreUnavailableError,
    TransportError,
    ValueTooLargeError,
)
from aexec.events import Event, EventKind, to_record
from aexec.inbox import (
    Cancel,
    DispatchFailed,
    FlushDue,
    Inbox,
    Item,
    MessageRejected,
    Reply,
    Resume,
    Start,
    WorkerLost,
)
from aexec.objects import ObjectStore
from aexec.plan import Plan
from aexec.scheduling import RunState
from aexec.store import RunRecord, Store
from aexec.transport import Delivery, Subscription, Transport
from aexec.types import ErrorInfo, RunStatus, StepStatus
from aexec.wire import (
    COORDINATOR_TOPIC,
    MAX_PRIORITY,
    RUNS_ENDED_TOPIC,
    SUBMIT_QUEUE,
    step_queue,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


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
    max_message_size: int = MAX_MESSAGE_SIZE  # no message it publishes is larger

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> CoordinatorConfig:
        """The coordinator knobs that ``settings`` carries (fail_fast, worker_timeout,
        lease); ``overrides`` set any field."""
        values: dict[str, Any] = {
            "fail_fast": settings.fail_fast,
            "worker_timeout": settings.worker_timeout,
            "lease": settings.lease,
        }
        return cls(**(values | overrides))


class Coordinator:
    """Drives runs: publishes ready steps, awaits pushed completions, records everything.

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
    ) -> None:
        self.transport = transport
        self.store = store
        self.objects = objects
        self.config = config or CoordinatorConfig()
        self.reply_queue = f"reply.{self.config.id}"
        self._on_queue = on_queue
        self._runs: dict[str, ActiveRun] = {}
        self._inbox = Inbox()
        self._timers: Timers[Item] = Timers(self._inbox.post)
        self._declared: set[str] = set()
        self._background: Background | None = None
        self._periodic: tuple[asyncio.Task[Any], ...] = ()  # loops that start work unasked
        self._subscription: Subscription | None = None
        self._submissions: Subscription | None = None
        self._commands: Subscription | None = None
        self._unrecorded: list[Event] = []  # with durable_dispatch False: not yet committed
        self._unfinished: list[ActiveRun] = []
        self._last_flush = time.monotonic()
        self._flush_armed = False
        self._adopted: dict[str, set[str]] = {}  # old reply queue → runs taken over from it
        self._adopted_subscriptions: dict[str, Subscription] = {}
        self.workers_seen: dict[str, float] = {}  # worker name → monotonic time last heard

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Coordinator:
        await self.transport.declare_queue(
            self.reply_queue,
            durable=self.config.durable_replies,
            auto_delete=not self.config.durable_replies,
        )
        self._subscription = await self.transport.consume(
            self.reply_queue, self._on_reply, prefetch=self.config.reply_prefetch
        )
        self._commands = await self.transport.subscribe(COORDINATOR_TOPIC, self._on_command)
        background = Background(f"coordinator {self.config.id}", on_failure=self._failed)
        await background.__aenter__()
        self._background = background
        background.start_loop(self._schedule_forever(), name=f"aexec-coordinator-{self.config.id}")
        self._periodic = (
            background.start_loop(self._watch_workers(), name="aexec-worker-watchdog"),
            background.start_loop(self._keep_leases(), name="aexec-leases"),
            background.start_loop(self._timers.run(), name="aexec-timers"),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop cleanly: take nothing new in, let the steps already decided reach the broker
        (for at most 5 s), stop the scheduler, commit what trails, and delete the reply queue
        unless runs it drives are still in flight (another coordinator will want it)."""
        background = self._background
        if background is None:
            return  # never entered, or aborted
        try:
            for task in self._periodic:
                task.cancel()  # no retry, takeover or lost worker starts new work now
            await self._drop_subscriptions()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await background.drain()  # the steps already decided reach the broker
        finally:
            self._background = None
            await background.aclose()  # raises what stopped it, if a task failed
        if self._unrecorded or self._unfinished:
            try:
                await self._flush()
            except StoreError as exc:
                log.error(
                    "coordinator %s could not record its last events: %s", self.config.id, exc
                )
        if not self._runs and self.config.durable_replies:
            # Nothing can still answer to this coordinator: its reply queue may go.  With
            # runs in flight it stays, for whichever coordinator takes them over.
            with contextlib.suppress(TransportError):
                await self.transport.delete_queues([self.reply_queue])
        self._end_runs()

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
            self._end_runs()

    async def _failed(self, failure: Exception) -> None:
        """A background task failed (a bug): the group has stopped; stop as :meth:`abort`
        does, and let the runs' waiters know why."""
        await self._drop_subscriptions()
        self._end_runs(AexecError(f"coordinator {self.config.id} stopped: {failure!r}"))

    async def _drop_subscriptions(self) -> None:
        """Consume nothing more; what was delivered and not acked goes back to its queue."""
        await self.stop_accepting()
        subscriptions = [self._commands, self._subscription, *self._adopted_subscriptions.values()]
        self._commands = self._subscription = None
        self._adopted_subscriptions.clear()
        for subscription in subscriptions:
            if subscription is not None:
                await subscription.cancel()

    def _end_runs(self, error: AexecError | None = None) -> None:
        """Stop driving every run: end their event streams, and cancel their waiters (or
        fail them with ``error``)."""
        runs = list(self._runs.values())
        self._runs.clear()
        for run in runs:
            for queue in run.subscribers:
                queue.put_nowait(None)
            if not run.done.done():
                if error is None:
                    run.done.cancel()
                else:
                    run.done.set_exception(error)

    def _require_running(self) -> Background:
        background = self._background
        if background is None or not background.running:
            state = "stopped" if background is not None else "not running (use `async with`)"
            raise AexecError(f"the coordinator is {state}")
        return background

    @property
    def active_runs(self) -> list[ActiveRun]:
        """The runs this coordinator drives now."""
        return list(self._runs.values())

    # -- submitting ------------------------------------------------------------------------

    async def accept_submissions(self) -> None:
        """Serve runs submitted by library clients through the broker."""
        if self._submissions is None:
            await self.transport.declare_queue(SUBMIT_QUEUE, max_priority=0)
            self._submissions = await self.transport.consume(
                SUBMIT_QUEUE, self._on_submit, prefetch=16
            )

    async def stop_accepting(self) -> None:
        if self._submissions is not None:
            await self._submissions.cancel()
            self._submissions = None

    async def _on_submit(self, delivery: Delivery) -> None:
        try:
            msg = messages.decode(delivery.body)
            if not isinstance(msg, messages.Submit):
                raise CodecError(f"expected a submission, got a {type(msg).__name__} message")
            plan = Plan.from_bytes(msg.plan)
        except (CodecError, PlanError) as exc:
            log.error("coordinator %s dead-lettered a bad submission: %s", self.config.id, exc)
            await self._settle(delivery, reject=True, reason=f"bad submission: {exc}")
            return
        known = msg.run_id in self._runs
        if not known:
            record = await self.store.get_run(msg.run_id)
            known = record is not None and record.run_id == msg.run_id
        if not known:
            try:
                await self.submit(plan, priority=msg.priority, run_id=msg.run_id, notify=msg.notify)
            except TransportError as exc:  # e.g. declaring its queues during a broker fault
                log.warning(
                    "coordinator %s will take submission %s again: %s",
                    self.config.id,
                    msg.run_id,
                    exc,
                )
                with contextlib.suppress(TransportError):
                    await delivery.reject(requeue=True)
                return
        await self._settle(delivery)

    async def _on_command(self, delivery: Delivery) -> None:
        try:
            msg = messages.decode(delivery.body)
        except CodecError as exc:
            log.warning("coordinator ignored a malformed command: %s", exc)
            return
        if not isinstance(msg, messages.Control) or msg.command != "cancel":
            return
        if msg.run_id is not None and msg.run_id in self._runs:
            await self.cancel(msg.run_id)

    async def submit(
        self,
        plan: Plan,
        *,
        priority: int = 0,
        run_id: str | None = None,
        notify: str | None = None,
    ) -> ActiveRun:
        """Record a new run of ``plan`` and start it; returns once it is durable.

        ``notify``: a remote client's queue, sent every event of the run from its
        run_submitted on."""
        self._require_running()
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
        )
        for queue in plan.queues:
            await self._declare(queue)
        submitted = await self._with_retry(
            "create run", lambda: self.store.create_run(record, plan)
        )
        run = ActiveRun(run_id, plan, priority, RunState(plan, fail_fast=self.config.fail_fast))
        run.notify = notify
        await self._notify(run, [submitted])  # before the run starts: the client sees it first
        self._runs[run_id] = run
        self._inbox.post(Start(run_id))
        return run

    async def adopt(self, record: RunRecord) -> ActiveRun | None:
        """Take over a run whose coordinator died (its lease is now ours): rebuild its
        schedule from the store, consume what is still waiting in the old coordinator's reply
        queue, and carry on.  Returns None for a run that cannot be resumed."""
        plan = await self.store.get_plan(record.plan_digest)
        if plan is None:
            log.error(
                "cannot resume run %s: its plan %s is missing", record.run_id, record.plan_digest
            )
            return None
        steps = await self.store.get_steps(record.run_id)
        for queue in plan.queues:
            await self._declare(queue)
        run = ActiveRun(
            record.run_id, plan, record.priority, RunState(plan, fail_fast=self.config.fail_fast)
        )
        actions = run.state.restore(
            [(s.status, s.attempts, s.output, s.error) for s in steps],
            started=record.status is not RunStatus.PENDING,
        )
        now = time.monotonic()
        for index, step in enumerate(steps):
            if step.status is StepStatus.RUNNING:
                # Its worker's heartbeats (to the old reply queue, consumed below) keep it;
                # silence for worker_timeout re-dispatches it.
                worker = step.worker or f"unknown-worker-of-{record.owner}"
                run.running_on[index] = worker
                self.workers_seen.setdefault(worker, now)
        previous = await self._last_driver(record.run_id)
        if previous and previous != self.config.id:
            await self._adopt_replies(f"reply.{previous}", record.run_id)
        self._runs[record.run_id] = run
        self._inbox.post(Resume(record.run_id, tuple(actions), previous))
        log.warning(
            "coordinator %s took over run %s from %s", self.config.id, record.run_id, previous
        )
        return run

    async def _last_driver(self, run_id: str) -> str | None:
        """The coordinator that drove the run last, as its event log tells."""
        driver = None
        for event in await self.store.get_events(run_id):
            if event.kind is EventKind.RUN_STARTED or event.kind is EventKind.RUN_RESUMED:
                coordinator = event.data.get("coordinator")
                driver = coordinator if isinstance(coordinator, str) else driver
        return driver

    async def _adopt_replies(self, queue: str, run_id: str) -> None:
        runs = self._adopted.get(queue)
        if runs is None:
            await self.transport.declare_queue(queue)
            subscription = await self.transport.consume(
                queue, self._on_reply, prefetch=self.config.reply_prefetch
            )
            self._adopted[queue] = runs = set()
            self._adopted_subscriptions[queue] = subscription
        runs.add(run_id)

    async def _release_adopted(self, run_id: str) -> None:
        for queue, runs in list(self._adopted.items()):
            runs.discard(run_id)
            if not runs:
                del self._adopted[queue]
                subscription = self._adopted_subscriptions.pop(queue, None)
                if subscription is not None:  # None once the coordinator stops consuming
                    await subscription.cancel()
                with contextlib.suppress(TransportError):
                    await self.transport.delete_queues([queue])

    async def _keep_leases(self) -> None:
        """Renew this coordinator's leases; let go of runs another one took over; adopt the
        runs whose coordinators stopped renewing (when this is a service)."""
        lease = self.config.lease
        while True:
            await asyncio.sleep(lease / 3)
            try:
                owned = await self.store.renew_leases(self.config.id, lease)
                for run_id, run in list(self._runs.items()):
                    if run_id not in owned and not run.state.finished:
                        self._lose(run)
                if self.config.adopt:
                    for record in await self.store.acquire_runs(self.config.id, lease):
                        if record.run_id not in self._runs:
                            await self.adopt(record)
            except (StoreError, TransportError) as exc:
                log.warning("coordinator %s could not keep its leases: %s", self.config.id, exc)

    def _lose(self, run: ActiveRun) -> None:
        log.warning("coordinator %s lost run %s to another coordinator", self.config.id, run.run_id)
        self._runs.pop(run.run_id, None)
        for queue in run.subscribers:
            queue.put_nowait(None)
        if not run.done.done():
            run.done.set_exception(
                AexecError(f"run {run.run_id} was taken over by another coordinator")
            )

    async def release(self) -> None:
        """Hand this coordinator's unfinished runs over at once (a clean shutdown)."""
        if self._runs:
            with contextlib.suppress(StoreError):
                await self.store.release_runs(self.config.id, list(self._runs))

    async def cancel(self, run_id: str) -> None:
        """Cancel a run: here if this coordinator drives it, else through the broadcast.
        Workers hear of it once it is recorded (:data:`~aexec.wire.RUNS_ENDED_TOPIC`)."""
        if run_id in self._runs:
            self._inbox.post(Cancel(run_id))
        else:
            await self.transport.broadcast(
                COORDINATOR_TOPIC, messages.Control("cancel", run_id=run_id).encode()
            )

    def message_rejected(self, body: bytes, reason: str, destination: str) -> None:
        """A message was refused at ``destination`` for ``reason`` (its signature, as
        :class:`~aexec.transport.signed.SignedTransport` tells): if its unverified ``body``
        names a run this coordinator drives, record a ``message_rejected`` event on it,
        saying which kind of message, where and why.  Nothing else is taken from the body."""
        try:
            msg = messages.decode(body)
        except CodecError:
            return
        run_id = getattr(msg, "run_id", None)
        if not isinstance(run_id, str) or run_id not in self._runs:
            return
        step = getattr(msg, "step_key", None)
        attempt = getattr(msg, "attempt", 0)
        self._inbox.post(MessageRejected(run_id, reason, destination, msg.KIND, step, attempt))

    def subscribe(self, run_id: str) -> asyncio.Queue[Event | None] | None:
        """A queue receiving the run's events as they are committed, then None."""
        run = self._runs.get(run_id)
        if run is None:
            return None
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        run.subscribers.append(queue)
        return queue

    async def events(self, run_id: str) -> AsyncIterator[Event]:
        """The run's events from the beginning: history from the store, then live ones."""
        live = self.subscribe(run_id)
        last = 0
        for event in await self.store.get_events(run_id):
            last = event.seq
            yield event
            if event.kind.ends_run:
                return
        if live is None:
            return
        while True:
            item = await live.get()
            if item is None:
                return
            if item.seq > last:
                yield item
                if item.kind.ends_run:
                    return

    # -- inbox -----------------------------------------------------------------------------

    async def _on_reply(self, delivery: Delivery) -> None:
        self._inbox.post(Reply(delivery))

    async def _declare(self, queue: str) -> None:
        if queue in self._declared:
            return
        await self.transport.declare_queue(step_queue(queue))
        self._declared.add(queue)
        if self._on_queue is not None:
            await self._on_queue(queue)

    # -- the scheduler ---------------------------------------------------------------------

    async def _schedule_forever(self) -> None:
        inbox = self._inbox
        while True:
            await inbox.wait()
            while inbox:
                try:
                    await self._schedule_once()
                except Exception:  # a bug must not stop every run this coordinator drives
                    log.exception("coordinator %s: a scheduler pass failed", self.config.id)

    async def _schedule_once(self) -> None:
        batch = Batch(self._runs, self.config.id, self.workers_seen)
        acks: list[Delivery] = []
        # Everything that arrived until now is one batch: one store transaction.
        for item in self._inbox.take():
            match item:
                case Reply():
                    if await self._take_reply(batch, item.delivery):
                        acks.append(item.delivery)
                case FlushDue():
                    pass  # it woke the scheduler: whether a flush is due is decided below
                case _:
                    batch.command(item)
        if self.config.durable_dispatch:
            # A step's dependents go out only once its completion is committed.
            if batch.events:
                await self._record(batch.events)
            await self._dispatch(batch, acks)
            await self._recorded(batch.events, batch.finished)
            return
        # Embedded: nothing outlives this process, so commits may trail the dispatches and
        # several waves share one transaction.
        await self._dispatch(batch, acks)
        self._unrecorded.extend(batch.events)
        self._unfinished.extend(batch.finished)
        due = time.monotonic() - self._last_flush >= self.config.flush_interval
        if batch.finished or due or len(self._unrecorded) >= 20_000:
            await self._flush()
        elif self._unrecorded and not self._flush_armed:
            self._flush_armed = True
            self._timers.after(self.config.flush_interval, FlushDue())

    async def _take_reply(self, batch: Batch, delivery: Delivery) -> bool:
        """Apply a reply to ``batch``; False when it is malformed or misplaced, and then
        dead-lettered."""
        try:
            msg = messages.decode(delivery.body)
        except CodecError as exc:
            log.error("coordinator %s dead-lettered a malformed reply: %s", self.config.id, exc)
            await self._settle(delivery, reject=True, reason=f"malformed: {exc}")
            return False
        if batch.reply(msg):
            return True
        log.error(
            "coordinator %s dead-lettered a %s message on its reply queue",
            self.config.id,
            type(msg).__name__,
        )
        await self._settle(delivery, reject=True, reason=f"a {msg.KIND} message on a reply queue")
        return False

    async def _record(self, events: list[Event]) -> None:
        await self._with_retry("record events", lambda: self.store.append(events))

    async def _flush(self) -> None:
        events, self._unrecorded = self._unrecorded, []
        finished, self._unfinished = self._unfinished, []
        self._flush_armed = False
        self._last_flush = time.monotonic()
        if events:
            await self._record(events)
        await self._recorded(events, finished)

    async def _dispatch(self, batch: Batch, acks: list[Delivery]) -> None:
        if batch.outgoing:
            # The next steps go out before the acks, and the scheduler does not wait for the
            # broker's confirms (a round trip) before taking the next completions in.
            background = self._require_running()
            limit = self.config.max_message_size
            outgoing = []
            for step in batch.outgoing:
                message = self._step_message(step)
                if len(message[1]) <= limit:
                    outgoing.append(message)
                else:  # its inputs go to the object store first
                    background.start_work(self._publish_oversized(step, len(message[1])))
            if outgoing:
                background.start_work(self._publish(outgoing))
        for delivery in acks:
            await self._settle(delivery)
        for timer in batch.retries:
            self._timers.after(timer.delay, timer.due)

    async def _recorded(self, events: list[Event], finished: list[ActiveRun]) -> None:
        """Events are in the store: tell their subscribers; finish the runs that ended."""
        notify: dict[str, list[Event]] = {}
        for event in events:
            target = self._runs.get(event.run_id)
            if target is None:
                continue
            for queue in target.subscribers:
                queue.put_nowait(event)
            if target.notify is not None:
                notify.setdefault(target.run_id, []).append(event)
        for run_id, run_events in notify.items():
            await self._notify(self._runs[run_id], run_events)
        for run in finished:
            self._runs.pop(run.run_id, None)
            if self._adopted:
                await self._release_adopted(run.run_id)
            for queue in run.subscribers:
                queue.put_nowait(None)
            if not run.done.done():
                run.done.set_result(run.state.run_status)
        if finished:
            await self._announce_ended(finished)

    async def _announce_ended(self, runs: list[ActiveRun]) -> None:
        """Tell every worker, present and future, that these runs ended (they are recorded):
        their step messages still queued are skipped, a cancelled run's attempts stop."""
        now = time.time()
        bodies = [messages.RunEnded(r.run_id, r.state.run_status.value, now).encode() for r in runs]

        async def announce() -> None:
            for body in bodies:
                await self.transport.announce(RUNS_ENDED_TOPIC, body)

        background = self._background
        if background is not None and background.running:
            background.start_work(self._with_retry("announce ended runs", announce))
            return
        try:  # stopping: one try
            await announce()
        except TransportError as exc:
            log.warning("coordinator %s could not announce ended runs: %s", self.config.id, exc)

    async def _settle(
        self, delivery: Delivery, *, reject: bool = False, reason: str | None = None
    ) -> None:
        """Ack a consumed message (dead-letter it with ``reject``, saying ``reason``).  If its
        channel died meanwhile (a broker restart, a closed connection) the broker redelivers
        it: its effect is committed already, and the run state ignores the duplicate."""
        try:
            if reject:
                await delivery.reject(requeue=False, reason=reason)
            else:
                await delivery.ack()
        except TransportError as exc:
            log.info("coordinator %s could not settle a delivery: %s", self.config.id, exc)

    async def _notify(self, run: ActiveRun, events: list[Event]) -> None:
        """Send a remote client its run's events; a client that went away stops the sends.
        Events that would make a message too large go in several (and a result too large
        for any goes to the object store, as a claim check)."""
        if run.notify is None:
            return
        records = [to_record(e) for e in events]
        body = messages.Events(run.run_id, records).encode()
        if len(body) <= self.config.max_message_size:
            bodies = [body]
        else:
            try:
                batches = await claim.event_batches(
                    self.objects, run.run_id, records, self.config.max_message_size
                )
            except (ObjectStoreError, ValueTooLargeError) as exc:
                log.error("cannot send run %s its events: %s", run.run_id, exc)
                return
            bodies = [messages.Events(run.run_id, batch).encode() for batch in batches]
        try:
            for body in bodies:
                await self.transport.publish(run.notify, body)
        except TransportError as exc:
            log.info("client of run %s is gone (%s); not notifying it any more", run.run_id, exc)
            run.notify = None

    async def _watch_workers(self) -> None:
        """Re-dispatch the steps of workers whose heartbeats lapsed (a liveness timer)."""
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
                for run in self._runs.values()
                for index, worker in run.running_on.items()
                if worker in lapsed
            ]
            for worker in sorted({command.worker for command in lost}):
                log.warning("worker %s stopped heartbeating; re-dispatching its steps", worker)
            for command in lost:
                self._inbox.post(command)

    async def _publish(self, outgoing: list[tuple[str, bytes, int]]) -> None:
        """Publish until every message is confirmed; after a partial failure only the
        unconfirmed ones go again (a confirmed one would only be a duplicate)."""
        pending = outgoing

        async def attempt() -> None:
            nonlocal pending
            try:
                await self.transport.publish_many(pending)
            except PublishError as exc:
                pending = exc.unsent
                raise

        await self._with_retry("publish steps", attempt)

    async def _publish_oversized(self, outgoing: Outgoing, size: int) -> None:
        """Publish a step whose message would be ``size`` bytes, over the limit: with its
        largest inputs moved to the object store, or, if that cannot be done, fail it."""
        run, index = outgoing.run, outgoing.index
        step = run.plan.steps[index]
        limit = self.config.max_message_size
        try:
            inputs = await claim.fit_inputs(
                self.objects, run, index, self._inputs(run, index), size - limit + claim.ENVELOPE
            )
            message = self._step_message(outgoing, inputs)
            if len(message[1]) > limit:
                raise ValueTooLargeError(
                    f"the message of step {step.key!r} is {len(message[1])} bytes with its "
                    f"inputs in the object store, over the {limit}-byte limit: its call "
                    f"holds {len(step.call)} bytes of constants"
                )
        except (ObjectStoreError, ValueTooLargeError) as exc:
            log.error("coordinator %s cannot send step %s of run %s: %s",
                      self.config.id, step.key, run.run_id, exc)  # fmt: skip
            error = ErrorInfo.from_exception(exc, retryable=isinstance(exc, ObjectStoreError))
            self._inbox.post(DispatchFailed(run.run_id, index, outgoing.attempt, error))
            return
        await self._publish([message])

    def _inputs(self, run: ActiveRun, index: int) -> list[bytes]:
        """The encoded upstream outputs step ``index`` takes, as its message carries them."""
        outputs, spilled = run.state.outputs, run.spilled
        deps = run.plan.steps[index].deps
        if not spilled:
            return [outputs[d] for d in deps]
        return [spilled.get(d) or outputs[d] for d in deps]

    def _step_message(
        self, outgoing: Outgoing, inputs: list[bytes] | None = None
    ) -> tuple[str, bytes, int]:
        """``(queue, body, priority)`` of the step message for ``outgoing`` (with ``inputs``,
        or the step's upstream outputs)."""
        run = outgoing.run
        step = run.plan.steps[outgoing.index]
        body = messages.StepMessage(
            run.run_id,
            step.key,
            outgoing.attempt,
            step.name,
            step.call,
            self._inputs(run, outgoing.index) if inputs is None else inputs,
            step.timeout,
            self.reply_queue,
        ).encode()
        return step_queue(step.queue), body, min(MAX_PRIORITY, run.priority + step.priority)

    async def _with_retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry ``call`` while its backend is unavailable: a run stalls, it is never lost."""
        delay = self.config.retry_backoff
        while True:
            try:
                return await call()
            except (StoreError, TransportError) as exc:
                transient = isinstance(exc, StoreUnavailableError | TransportError)
                log.log(
                    logging.WARNING if transient else logging.ERROR,
                    "coordinator %s: %s failed, retrying in %.2fs: %s",
                    self.config.id,
                    what,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.retry_backoff_max)


def step_errors(run: ActiveRun) -> dict[str, ErrorInfo]:
    return {run.plan.steps[i].key: err for i, err in run.state.errors.items()}
