"""The library facade: :class:`Executor` composes a coordinator (and, embedded, a worker) from
:class:`~aexec.config.Settings`.

Adapters are built from the settings' URLs by the ports' own ``from_url``
(:func:`aexec.store.from_url`, :func:`aexec.objects.from_url`,
:func:`aexec.transport.from_url`); the runs it hands out are in :mod:`aexec.run`.

``Executor()`` is the embedded mode: in-memory transport, an in-process worker on the same
event loop, the SQLite store and a directory for large outputs under ``AEXEC_HOME``.
``Executor.from_url(broker="amqp://...")`` embeds a coordinator that drives runs through
RabbitMQ, with workers elsewhere; with ``remote=True`` it instead submits runs to a
long-lived ``aexec coordinator`` and follows them through the broker.  Either way it runs
on the caller's event loop and starts no thread (sync steps of the embedded worker run in
a bounded pool created on first use).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import aexec.objects
import aexec.store
import aexec.transport
from aexec import collector, messages
from aexec.background import Background
from aexec.claim import ENVELOPE
from aexec.config import MAX_MESSAGE_SIZE, Settings
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.dsl import CompiledPipeline, Pipeline, StepDef
from aexec.errors import AexecError, CodecError, ConfigError, ParameterError, PlanError
from aexec.events import Event, from_record
from aexec.gateway import Gateway
from aexec.metrics import CoordinatorMetrics
from aexec.objects import ObjectStore
from aexec.plan import Plan
from aexec.run import LocalRun, RemoteRun, Run, load_result
from aexec.store import RunRecord, StepRecord, Store, WebhookDelivery
from aexec.transport import Delivery, Transport
from aexec.types import RunStatus, check_tags
from aexec.wire import MAX_PRIORITY, REQUEST_QUEUE, RUNS_ENDED_TOPIC, SUBMIT_QUEUE, step_queue
from aexec.worker import Worker, WorkerConfig

if TYPE_CHECKING:  # imported where used: an embedded run needs none of them
    from aexec.retention import Pruned

SILENCE = 10.0
"""Seconds a remote run may stay silent before its client asks about it (then doubling)."""


class Executor:
    """Submit pipelines, await results, inspect runs.  Use it as an async context manager."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        steps: Iterable[StepDef[Any, Any]] = (),
        metrics: CoordinatorMetrics | None = None,
    ) -> None:
        """``steps`` are served by the embedded worker besides those of the pipelines
        submitted; ``metrics`` (if given) counts what the coordinator records."""
        self.settings = settings or Settings.resolve()
        self.metrics = metrics
        self._extra_steps = list(steps)
        self._stack: contextlib.AsyncExitStack | None = None
        self._store: Store | None = None
        self._objects: ObjectStore | None = None
        self._transport: Transport | None = None
        self._coordinator: Coordinator | None = None
        self._worker: Worker | None = None
        self._notify_queue: str | None = None
        self._remote_runs: dict[str, RemoteRun] = {}
        self._engine_lock = asyncio.Lock()

    @classmethod
    def from_url(
        cls,
        broker: str | None = None,
        store: str | None = None,
        objects: str | None = None,
        **settings: Any,
    ) -> Executor:
        """Build from backend URLs (``None``: the embedded default for that backend)."""
        values = {"broker": broker, "store": store, "objects": objects, **settings}
        return cls(Settings.resolve(values))

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Executor:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            if self.settings.embedded:
                # Compiling and running allocate steadily, and the objects die young or
                # live as long as a run: fewer young collections (see aexec.collector).
                stack.enter_context(collector.relaxed())
            if not self.settings.remote or self.settings.store is not None:
                store = aexec.store.from_url(self.settings.store_url)
                await store.open()
                stack.push_async_callback(store.close)
                self._store = store
            objects = aexec.objects.from_url(self.settings.objects_url)
            await objects.open()
            stack.push_async_callback(objects.close)
        except BaseException:
            await stack.aclose()
            self._store = None
            raise
        self._stack, self._objects = stack, objects
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        try:
            if self._coordinator is not None and self.settings.embedded:
                await self._cancel_active(self._coordinator)
        finally:
            await stack.aclose()
            self._store = self._objects = self._transport = None
            self._coordinator = self._worker = None

    async def _cancel_active(self, coordinator: Coordinator) -> None:
        pending = coordinator.active_runs
        for run in pending:
            await coordinator.cancel(run.run_id)
        if pending:
            await asyncio.wait([asyncio.shield(run.done) for run in pending], timeout=5.0)

    async def _open_transport(self) -> Transport:
        if self._transport is None:
            stack = self._require_stack()
            transport = aexec.transport.from_url(
                self.settings.broker,
                prefix=self.settings.queue_prefix,
                secret=self.settings.secret,
            )
            await transport.open()
            stack.push_async_callback(transport.close)
            self._transport = transport
        return self._transport

    def _require_stack(self) -> contextlib.AsyncExitStack:
        if self._stack is None:
            raise AexecError("the executor is not open (use `async with Executor() as ex`)")
        return self._stack

    async def _start_engine(self, *, adopt: bool = False) -> Coordinator:
        async with self._engine_lock:
            if self._coordinator is not None:
                return self._coordinator
            stack, store, objects = self._require_stack(), self.store, self.objects
            settings = self.settings
            transport = await self._open_transport()
            webhooks = None
            if settings.webhooks:
                from aexec.webhooks import Deliverer, Webhooks

                # Entered before the coordinator, so left after it: what its last commits
                # decided gets a grace period to be sent.
                webhooks = Webhooks(settings.webhooks)
                owner = f"webhooks-{uuid.uuid4().hex[:12]}"
                await stack.enter_async_context(Deliverer(store, webhooks, owner))
            if settings.embedded:
                worker = Worker(
                    transport,
                    objects,
                    None,
                    WorkerConfig.from_settings(settings, name="embedded"),
                )
                worker.add_steps(self._extra_steps)
                coordinator = Coordinator(
                    transport,
                    store,
                    # Nothing outlives the process: replies and dispatches need no durability.
                    CoordinatorConfig.from_settings(
                        settings, durable_replies=False, durable_dispatch=False
                    ),
                    objects=objects,
                    on_queue=worker.serve,
                    metrics=self.metrics,
                    webhooks=webhooks,
                    gateways=_gateways(settings, objects),
                )
                # Its completions go to the coordinator as they are, not through the
                # transport (the step messages do: priorities, prefetch, redelivery).
                worker.hand_over_to(coordinator.hand_over)
                # Exits run in reverse: the worker drains before the coordinator stops.
                await stack.enter_async_context(coordinator)
                await stack.enter_async_context(worker)
                await worker.listen_for_control()
                self._worker = worker
            else:
                coordinator = Coordinator(
                    transport,
                    store,
                    CoordinatorConfig.from_settings(settings, adopt=adopt),
                    objects=objects,
                    metrics=self.metrics,
                    webhooks=webhooks,
                    gateways=_gateways(settings, objects),
                )
                await stack.enter_async_context(coordinator)
            if settings.secret is not None:
                _record_rejections(transport, coordinator)
            self._coordinator = coordinator
            return coordinator

    async def _start_client(self) -> Transport:
        async with self._engine_lock:
            transport = await self._open_transport()
            if self._notify_queue is None:
                queue = f"client.{uuid.uuid4().hex[:12]}"
                await transport.declare_queue(
                    queue, max_priority=0, durable=False, auto_delete=True
                )
                await transport.declare_queue(SUBMIT_QUEUE, max_priority=0)
                subscription = await transport.consume(queue, self._on_events, prefetch=100)
                self._require_stack().push_async_callback(subscription.cancel)
                self._notify_queue = queue
                # A run whose end this client missed (its queue was gone a while, or the
                # coordinator died before telling it) is caught up from the retained
                # announcements of ended runs, read again after every reconnection.
                await transport.declare_queue(REQUEST_QUEUE, max_priority=0)
                ended = await transport.follow(RUNS_ENDED_TOPIC, self._on_run_ended)
                self._require_stack().push_async_callback(ended.cancel)
                # And, should both miss it, a run silent for long is asked about.
                background = Background("aexec client")
                await self._require_stack().enter_async_context(background)
                background.start_loop(self._ask_about_silent_runs(), name="aexec-client")
            return transport

    async def start(self, *, service: bool = False) -> None:
        """Connect to the broker and start the coordinator now, rather than at the first
        submission; a ``service`` coordinator also takes over the runs of coordinators
        that stopped (as :meth:`serve` does)."""
        if self.settings.remote:
            raise ConfigError("a remote executor runs no coordinator")
        await self._start_engine(adopt=service)

    async def _ask_about_silent_runs(self) -> None:
        """Ask a coordinator service for the events of each unfinished remote run this
        client has heard nothing of for a while (the silence allowed doubles each time,
        up to a minute): a last resort, for an end whose message and announcement were
        both lost to this client (its queue was gone, or a coordinator died in between)."""
        allowed: dict[str, float] = {}
        while True:
            await asyncio.sleep(SILENCE / 2)
            now = time.monotonic()
            for run_id, run in list(self._remote_runs.items()):
                quiet = allowed.get(run_id, SILENCE)
                if run.status.finished or now - run.heard < quiet:
                    continue
                allowed[run_id] = min(quiet * 2, 60.0)
                run.heard = now
                with contextlib.suppress(AexecError):
                    await self._ask_for_events(run_id)
            for run_id in [r for r in allowed if r not in self._remote_runs]:
                del allowed[run_id]

    async def serve(
        self, stop: asyncio.Event, *, grace: float = 30.0, ready: asyncio.Event | None = None
    ) -> None:
        """Be a coordinator service: drive runs submitted by clients until ``stop`` is set,
        then stop accepting and let the runs in flight finish (for at most ``grace`` s).
        ``ready`` is set once submissions are being accepted.  If the coordinator stops on
        its own (a failure stopped it), this raises that failure at once."""
        if self.settings.embedded:
            raise ConfigError("a coordinator service needs a broker (--broker amqp://...)")
        coordinator = await self._start_engine(adopt=True)
        await coordinator.accept_submissions()
        if ready is not None:
            ready.set()
        await coordinator.until(stop)  # raises if a failure stops the coordinator first
        await coordinator.stop_accepting()
        pending = [run.done for run in coordinator.active_runs]
        if pending:
            await asyncio.wait([asyncio.shield(done) for done in pending], timeout=grace)
        await coordinator.release()  # what is still running goes to another coordinator now

    @property
    def coordinator(self) -> Coordinator | None:
        """The coordinator it runs, once started (by the first submission, or :meth:`serve`)."""
        return self._coordinator

    @property
    def worker(self) -> Worker | None:
        """The worker it runs in this process (embedded mode), once started."""
        return self._worker

    # -- submitting ------------------------------------------------------------------------

    async def submit(
        self,
        pipeline: Pipeline | CompiledPipeline,
        /,
        *,
        priority: int = 0,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Run:
        """Compile ``pipeline`` with its parameters (``params`` and/or keyword arguments)
        and start a run of it with ``priority`` (0..10), labelled ``tags`` (text to text:
        ``aexec runs list --tag k=v`` and the UI find runs by them)."""
        if (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or not (0 <= priority <= MAX_PRIORITY)
        ):
            raise PlanError(f"run priority must be an integer 0..{MAX_PRIORITY}, not {priority!r}")
        try:
            labels = check_tags(dict(tags or {}))
        except (ValueError, TypeError) as exc:
            raise PlanError(str(exc)) from None
        values = {**(params or {}), **kwargs}
        if isinstance(pipeline, Pipeline):
            compiled = pipeline.compile(**values)
        elif values:
            raise PlanError("parameters are bound at compile time: pass the Pipeline, not a plan")
        else:
            compiled = pipeline
        return await self._start_run(compiled.plan, compiled.steps, priority, labels)

    async def rerun(
        self,
        run_id: str,
        /,
        *,
        from_failure: bool = False,
        pipeline: Pipeline | None = None,
        priority: int | None = None,
        tags: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Run:
        """Start a new run of run ``run_id``'s pipeline, recording ``run_id`` as its parent.

        With ``from_failure``, the new run takes the outputs of the steps that succeeded in
        ``run_id`` (which must have ended) as they are, without running them again, and
        runs only the others (failed, skipped, cancelled) and their dependents; a step is
        reused only if its call and its inputs are the same in both runs.  Parameters
        (``params`` and/or keyword arguments) change the run's parameters: they need the
        ``pipeline`` to compile again, and so does the embedded mode (its worker needs the
        steps' code).  ``priority`` and ``tags`` default to those of ``run_id``."""
        record = await self.store.get_run(run_id)
        if record is None:
            raise ParameterError(f"no run {run_id!r} to rerun")
        if from_failure and not record.status.finished:
            raise ParameterError(
                f"run {record.run_id} is {record.status}: --from-failure needs a run that ended"
            )
        values = {**(params or {}), **kwargs}
        if pipeline is not None:
            if pipeline.name != record.pipeline:
                raise ParameterError(
                    f"run {record.run_id} ran pipeline {record.pipeline!r}, not {pipeline.name!r}"
                )
            compiled = pipeline.compile(**{**record.params, **values})
            plan, steps = compiled.plan, compiled.steps
        elif values:
            raise ParameterError(
                "changing the parameters of a rerun needs the pipeline's code (pipeline=, or "
                "--file FILE at the command line)"
            )
        elif not self.settings.remote and self.settings.embedded:
            raise ParameterError(
                "a rerun in embedded mode needs the pipeline's code for its worker "
                "(pipeline=, or --file FILE at the command line)"
            )
        else:
            found = await self.store.get_plan(record.plan_digest)
            if found is None:
                raise ParameterError(f"the plan of run {record.run_id} is not in the store")
            plan, steps = found, {}
        return await self._start_run(
            plan,
            steps,
            record.priority if priority is None else priority,
            record.tags if tags is None else _labels(tags),
            parent=record.run_id,
            from_failure=from_failure,
        )

    async def _start_run(
        self,
        plan: Plan,
        steps: Mapping[str, StepDef[Any, Any]],
        priority: int,
        tags: dict[str, str],
        *,
        parent: str | None = None,
        from_failure: bool = False,
    ) -> Run:
        if self.settings.remote:
            return await self._submit_remote(plan, priority, tags, parent, from_failure)
        coordinator = await self._start_engine()
        if self._worker is not None:
            local = {s.name for s in self._extra_steps}
            missing = sorted(
                n for n, s in steps.items() if s.fn is None and not s.kind and n not in local
            )
            if missing:
                raise PlanError(
                    f"remote step {missing[0]!r} has no implementation in embedded mode: "
                    "run with a broker and a worker that serves it"
                )
            self._worker.add_steps(steps.values())
        active = await coordinator.submit(
            plan, priority=priority, tags=tags, parent=parent, from_failure=from_failure
        )
        return LocalRun(
            coordinator,
            active,
            self.store,
            self.objects,
            max_value_size=self.settings.max_value_size,
        )

    async def _submit_remote(
        self,
        plan: Plan,
        priority: int,
        tags: dict[str, str],
        parent: str | None = None,
        from_failure: bool = False,
    ) -> RemoteRun:
        data = plan.to_bytes()
        if len(data) > MAX_MESSAGE_SIZE - ENVELOPE:
            raise PlanError(
                f"the plan of pipeline {plan.pipeline!r} is {len(data)} bytes, too large to "
                f"submit in a message (at most {MAX_MESSAGE_SIZE}): pass large values to "
                "steps from a step, not as parameters or constants"
            )
        transport = await self._start_client()
        run = RemoteRun(
            uuid.uuid4().hex,
            plan,
            priority,
            objects=self.objects,
            cancel=self._broadcast_cancel,
            max_value_size=self.settings.max_value_size,
            tags=tags,
        )
        self._remote_runs[run.run_id] = run
        body = messages.Submit(
            run.run_id, data, priority, self._notify_queue, tags, parent, from_failure
        ).encode()
        await transport.publish(SUBMIT_QUEUE, body)
        return run

    async def _on_events(self, delivery: Delivery) -> None:
        await delivery.ack()
        try:
            msg = messages.decode(delivery.body)
            if not isinstance(msg, messages.Events):
                return
            events = [from_record(msg.run_id, r) for r in msg.records]
        except (CodecError, ValueError, TypeError):
            return
        run = self._remote_runs.get(msg.run_id)
        if run is not None:
            run.receive(events)
            if run.status.finished:
                self._remote_runs.pop(msg.run_id, None)

    async def cancel(self, run_id: str, reason: str | None = None) -> None:
        """Cancel run ``run_id`` (``reason``: why, in its ``run_cancelled`` event): its
        unfinished steps are cancelled and it ends ``cancelled``.  The request is durable
        (:func:`aexec.control.cancel_run`): kept in this executor's store when it has one,
        else in the broker's request queue, and honoured by whichever coordinator drives
        the run now or later.  In embedded mode (no broker) only a run of this executor
        can be cancelled, any other is an :class:`~aexec.errors.AexecError`."""
        coordinator = self._coordinator
        if coordinator is not None and run_id in coordinator.runs:
            await coordinator.cancel(run_id, reason)
        elif self.settings.embedded:
            raise AexecError(
                f"run {run_id} is not driven by this process: with no broker, only the "
                "process running a run can cancel it"
            )
        elif coordinator is not None:
            await coordinator.cancel(run_id, reason)  # recorded, and passed on
        elif self._store is not None:
            from aexec.control import cancel_run

            transport = await self._open_transport()
            await cancel_run(run_id, reason, store=self._store, transport=transport)
        else:
            await self._broadcast_cancel(run_id, reason)

    async def workers(self, *, wait: float = 0.5) -> list[messages.WorkerInfo]:
        """The workers that answer a ping within ``wait`` seconds, by name (in embedded
        mode, this executor's own worker once it runs)."""
        if self.settings.embedded and self._worker is None:
            return []
        from aexec.control import list_workers

        return await list_workers(await self._open_transport(), wait=wait)

    async def queue_depths(self, names: Iterable[str]) -> dict[str, int]:
        """How many messages wait in each of the step queues ``names`` (those that exist)."""
        if self.settings.embedded and self._worker is None:
            return {}
        physical = {step_queue(name): name for name in names}
        depths = await (await self._open_transport()).queue_depths(physical)
        return {physical[queue]: depth for queue, depth in depths.items()}

    async def _on_run_ended(self, delivery: Delivery) -> None:
        """A run ended: if it is one of this client's and its end has not arrived, ask a
        coordinator service for its events."""
        try:
            msg = messages.decode(delivery.body)
        except CodecError:
            return
        if not isinstance(msg, messages.RunEnded):
            return
        run = self._remote_runs.get(msg.run_id)
        if run is None or run.status.finished:
            return
        await self._ask_for_events(msg.run_id)

    async def _ask_for_events(self, run_id: str) -> None:
        """Ask a coordinator service to send this client run ``run_id``'s events."""
        if self._transport is None:
            return
        ask = messages.Control("events", reply_to=self._notify_queue, run_id=run_id)
        await self._transport.publish(REQUEST_QUEUE, ask.encode())

    async def _broadcast_cancel(self, run_id: str, reason: str | None) -> None:
        """A remote run's cancel: durable, whether a coordinator drives it yet or not."""
        from aexec.control import cancel_run

        transport = await self._open_transport()
        await cancel_run(run_id, reason, transport=transport)

    # -- reading ---------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        if self._store is None:
            raise AexecError("the executor has no open store (use `async with Executor() as ex`)")
        return self._store

    @property
    def objects(self) -> ObjectStore:
        if self._objects is None:
            raise AexecError("the executor is not open (use `async with Executor() as ex`)")
        return self._objects

    async def get_run(self, run_id: str) -> RunRecord | None:
        return await self.store.get_run(run_id)

    async def list_runs(
        self,
        *,
        limit: int = 50,
        status: RunStatus | None = None,
        pipeline: str | None = None,
        tag: tuple[str, str] | None = None,
        offset: int = 0,
    ) -> list[RunRecord]:
        """Most recent first, filtered as :meth:`Store.list_runs <aexec.store.Store.list_runs>`."""
        return await self.store.list_runs(
            limit=limit, status=status, pipeline=pipeline, tag=tag, offset=offset
        )

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        return await self.store.get_steps(run_id)

    async def get_deliveries(self, run_id: str) -> list[WebhookDelivery]:
        """The run's webhook deliveries (the outbox rows its ending made), oldest first."""
        return await self.store.get_deliveries(run_id)

    async def get_events(
        self, run_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[Event]:
        return await self.store.get_events(run_id, after=after, limit=limit)

    async def prune_runs(self, older_than: float, *, dry_run: bool = False) -> list[Pruned]:
        """Delete the runs that finished more than ``older_than`` seconds ago, with their
        objects, steps and events (:func:`aexec.retention.prune`); never an unfinished run.
        With ``dry_run``, only list them."""
        from aexec.retention import cutoff, prune

        return await prune(
            self.store, self.objects, finished_before=cutoff(older_than), dry_run=dry_run
        )

    async def load_result(self, record: RunRecord) -> Any:
        """The decoded result of a succeeded run; raises
        :class:`~aexec.errors.RunFailedError` for a failed or cancelled one."""
        return await load_result(
            self.store, self.objects, record, max_size=self.settings.max_value_size
        )


def _record_rejections(transport: Transport, coordinator: Coordinator) -> None:
    """A message refused for its signature (``transport`` signs: a secret is set) that
    names one of ``coordinator``'s runs is recorded on that run."""
    from aexec.transport.signed import Rejection, SignedTransport

    if not isinstance(transport, SignedTransport):
        return

    def rejected(rejection: Rejection) -> None:
        coordinator.message_rejected(rejection.body, rejection.reason, rejection.destination)

    transport.on_reject(rejected)


def _gateways(settings: Settings, objects: ObjectStore) -> dict[str, Gateway]:
    """The gateways a coordinator built from ``settings`` sends foreign steps through:
    Celery's, when a Celery broker is configured (or aexec's broker is RabbitMQ)."""
    from aexec.celery import gateway_wanted

    if not gateway_wanted(settings):
        return {}
    from aexec.celery.gateway import KIND, from_settings

    celery = from_settings(settings, objects)
    return {} if celery is None else {KIND: celery}


def _labels(tags: Mapping[str, str]) -> dict[str, str]:
    """Run tags checked (:func:`~aexec.types.check_tags`); a :class:`PlanError` if bad."""
    try:
        return check_tags(dict(tags))
    except (ValueError, TypeError) as exc:
        raise PlanError(str(exc)) from None
