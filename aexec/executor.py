"""The composition root and library facade: adapters are chosen here, by URL, and only here.

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
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aexec import messages
from aexec.batch import ActiveRun
from aexec.config import Settings
from aexec.coordinator import SUBMIT_QUEUE, Coordinator, CoordinatorConfig
from aexec.dsl import CompiledPipeline, Pipeline, StepDef
from aexec.errors import AexecError, CodecError, ConfigError, PlanError, RunFailed
from aexec.events import Event, from_record
from aexec.objects import ObjectStore, load_value
from aexec.plan import MAX_PRIORITY, Plan
from aexec.store import RunRecord, StepRecord, Store, fold
from aexec.transport import Delivery, Transport
from aexec.types import RunStatus, StepStatus
from aexec.worker import Worker, WorkerConfig

_END = object()


def make_store(url: str) -> Store:
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


def make_objects(url: str) -> ObjectStore:
    scheme = url.split(":", 1)[0]
    if scheme == "memory":
        from aexec.objects.memory import MemoryObjectStore

        return MemoryObjectStore()
    if scheme == "file":
        from aexec.objects.fs import FileObjectStore

        return FileObjectStore.from_url(url)
    if scheme == "s3":
        from aexec.objects.s3 import S3ObjectStore

        return S3ObjectStore.from_url(url)
    raise ConfigError(f"unsupported objects URL scheme {scheme}://")


def make_transport(url: str | None, *, prefix: str | None = None) -> Transport:
    """The transport for ``url``: in-memory for None or ``memory://``, else RabbitMQ.

    ``prefix`` names every broker queue (``?prefix=`` in the URL wins over it).
    """
    if url is None or url.startswith("memory:"):
        from aexec.transport.memory import MemoryTransport

        return MemoryTransport()
    from aexec.transport.amqp import AmqpTransport

    parts = urlsplit(url)
    if prefix is not None and "prefix" not in dict(parse_qsl(parts.query)):
        query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), ("prefix", prefix)])
        url = urlunsplit(parts._replace(query=query))
    return AmqpTransport.from_url(url)


class Run:
    """A submitted run: await its result, stream its events, cancel it."""

    run_id: str
    plan: Plan

    @property
    def status(self) -> RunStatus:
        raise NotImplementedError

    async def wait(self) -> RunRecord:
        """Wait for the run to end; return its final record (never raises RunFailed)."""
        raise NotImplementedError

    async def result(self) -> Any:
        """The pipeline's result; raises :class:`~aexec.errors.RunFailed` unless it succeeded."""
        raise NotImplementedError

    def events(self) -> AsyncIterator[Event]:
        """Every event of the run, from its submission until its end."""
        raise NotImplementedError

    async def steps(self) -> list[StepRecord]:
        """The run's steps with their status and attempts, in plan order."""
        raise NotImplementedError

    async def cancel(self) -> None:
        """Cancel the run: unfinished steps are cancelled and the run ends ``cancelled``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<Run {self.run_id} {self.plan.pipeline} {self.status}>"


class LocalRun(Run):
    """A run driven by the coordinator inside this executor."""

    def __init__(self, executor: Executor, coordinator: Coordinator, active: ActiveRun) -> None:
        self._executor = executor
        self._coordinator = coordinator
        self._active = active
        self.run_id = active.run_id
        self.plan = active.plan

    @property
    def status(self) -> RunStatus:
        return self._active.status

    async def wait(self) -> RunRecord:
        await asyncio.shield(self._active.done)
        record = await self._executor.get_run(self.run_id)
        if record is None:  # pragma: no cover - the store lost a run it acknowledged
            raise AexecError(f"run {self.run_id} vanished from the store")
        return record

    async def result(self) -> Any:
        return await self._executor.load_result(await self.wait())

    def events(self) -> AsyncIterator[Event]:
        return self._coordinator.events(self.run_id)

    async def steps(self) -> list[StepRecord]:
        return await self._executor.get_steps(self.run_id)

    async def cancel(self) -> None:
        await self._coordinator.cancel(self.run_id)


class RemoteRun(Run):
    """A run submitted to a coordinator service; its events arrive through the broker."""

    def __init__(self, executor: Executor, run_id: str, plan: Plan, priority: int) -> None:
        self._executor = executor
        self.run_id = run_id
        self.plan = plan
        self._record = RunRecord(
            run_id,
            plan.pipeline,
            plan.digest,
            RunStatus.PENDING,
            priority,
            plan.parameters,
            created_at=time.time(),
        )
        self._steps = {s.key: StepRecord(run_id, s.key, s.name, s.queue) for s in plan.steps}
        self._history: list[Event] = []
        self._listeners: list[asyncio.Queue[Any]] = []
        self._done: asyncio.Future[RunRecord] = asyncio.get_running_loop().create_future()

    @property
    def status(self) -> RunStatus:
        return self._record.status

    def _receive(self, events: list[Event]) -> None:
        """Take in events as the coordinator recorded them: the run and its steps change as
        they do in the store (:mod:`aexec.store.fold`)."""
        record = self._record
        for event in events:
            if event.seq and self._history and event.seq <= self._history[-1].seq:
                continue  # a redelivered batch
            self._history.append(event)
            fold.apply(record, self._steps, event)
            for queue in self._listeners:
                queue.put_nowait(event)
        if record.status.finished and not self._done.done():
            self._done.set_result(record)
            for queue in self._listeners:
                queue.put_nowait(_END)

    async def wait(self) -> RunRecord:
        return await asyncio.shield(self._done)

    async def result(self) -> Any:
        record = await self.wait()
        if record.status is not RunStatus.SUCCEEDED:
            errors = {
                s.key: s.error
                for s in self._steps.values()
                if s.error is not None and s.status is StepStatus.FAILED
            }
            message = None if errors else f"run {self.run_id} {record.status}"
            raise RunFailed(self.run_id, str(record.status), errors, message)
        return await self._executor._decode_result(record.result)

    async def events(self) -> AsyncIterator[Event]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        history = list(self._history)
        if not self._done.done():
            self._listeners.append(queue)
        try:
            for event in history:
                yield event
            if self._done.done():
                return
            while (item := await queue.get()) is not _END:
                if item not in history:
                    yield item
        finally:
            if queue in self._listeners:
                self._listeners.remove(queue)

    async def steps(self) -> list[StepRecord]:
        """Step statuses as the events received so far tell them."""
        return [replace(step) for step in self._steps.values()]

    async def cancel(self) -> None:
        await self._executor._broadcast_cancel(self.run_id)


class Executor:
    """Submit pipelines, await results, inspect runs.  Use it as an async context manager."""

    def __init__(
        self, settings: Settings | None = None, *, steps: Iterable[StepDef[Any, Any]] = ()
    ) -> None:
        self.settings = settings or Settings.resolve()
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
            if not self.settings.remote or self.settings.store is not None:
                store = make_store(self.settings.store_url)
                await store.open()
                stack.push_async_callback(store.close)
                self._store = store
            objects = make_objects(self.settings.objects_url)
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
            transport = make_transport(self.settings.broker, prefix=self.settings.queue_prefix)
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
            if settings.embedded:
                worker = Worker(
                    transport,
                    objects,
                    None,
                    WorkerConfig(
                        name="embedded",
                        concurrency=settings.concurrency,
                        thread_pool_size=settings.thread_pool_size,
                        inline_threshold=settings.inline_threshold,
                        heartbeat_interval=settings.heartbeat_interval,
                        ack_after=settings.ack_after,
                    ),
                )
                worker.add_steps(self._extra_steps)
                coordinator = Coordinator(
                    transport,
                    store,
                    CoordinatorConfig(
                        fail_fast=settings.fail_fast,
                        durable_replies=False,
                        durable_dispatch=False,
                        worker_timeout=settings.worker_timeout,
                    ),
                    on_queue=worker.serve,
                )
                # Exits run in reverse: the worker drains before the coordinator stops.
                await stack.enter_async_context(coordinator)
                await stack.enter_async_context(worker)
                await worker.listen_for_control()
                self._worker = worker
            else:
                coordinator = Coordinator(
                    transport,
                    store,
                    CoordinatorConfig(
                        fail_fast=settings.fail_fast,
                        worker_timeout=settings.worker_timeout,
                        lease=settings.lease,
                        adopt=adopt,
                    ),
                )
                await stack.enter_async_context(coordinator)
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
            return transport

    async def serve(
        self, stop: asyncio.Event, *, grace: float = 30.0, ready: asyncio.Event | None = None
    ) -> None:
        """Be a coordinator service: drive runs submitted by clients until ``stop`` is set,
        then stop accepting and let the runs in flight finish (for at most ``grace`` s).
        ``ready`` is set once submissions are being accepted."""
        if self.settings.embedded:
            raise ConfigError("a coordinator service needs a broker (--broker amqp://...)")
        coordinator = await self._start_engine(adopt=True)
        await coordinator.accept_submissions()
        if ready is not None:
            ready.set()
        await stop.wait()
        await coordinator.stop_accepting()
        pending = [run.done for run in coordinator.active_runs]
        if pending:
            await asyncio.wait([asyncio.shield(done) for done in pending], timeout=grace)
        await coordinator.release()  # what is still running goes to another coordinator now

    # -- submitting ------------------------------------------------------------------------

    async def submit(
        self,
        pipeline: Pipeline | CompiledPipeline,
        /,
        *,
        priority: int = 0,
        params: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Run:
        """Compile ``pipeline`` with its parameters (``params`` and/or keyword arguments)
        and start a run of it with ``priority`` (0..10)."""
        if (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or not (0 <= priority <= MAX_PRIORITY)
        ):
            raise PlanError(f"run priority must be an integer 0..{MAX_PRIORITY}, not {priority!r}")
        values = {**(params or {}), **kwargs}
        if isinstance(pipeline, Pipeline):
            compiled = pipeline.compile(**values)
        elif values:
            raise PlanError("parameters are bound at compile time: pass the Pipeline, not a plan")
        else:
            compiled = pipeline
        if self.settings.remote:
            return await self._submit_remote(compiled.plan, priority)
        coordinator = await self._start_engine()
        if self._worker is not None:
            local = {s.name for s in self._extra_steps}
            missing = sorted(
                n for n, s in compiled.steps.items() if s.fn is None and n not in local
            )
            if missing:
                raise PlanError(
                    f"remote step {missing[0]!r} has no implementation in embedded mode: "
                    "run with a broker and a worker that serves it"
                )
            self._worker.add_steps(compiled.steps.values())
        active = await coordinator.submit(compiled.plan, priority=priority)
        return LocalRun(self, coordinator, active)

    async def _submit_remote(self, plan: Plan, priority: int) -> RemoteRun:
        transport = await self._start_client()
        run = RemoteRun(self, uuid.uuid4().hex, plan, priority)
        self._remote_runs[run.run_id] = run
        body = messages.Submit(run.run_id, plan.to_bytes(), priority, self._notify_queue).encode()
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
            run._receive(events)
            if run.status.finished:
                self._remote_runs.pop(msg.run_id, None)

    async def _broadcast_cancel(self, run_id: str) -> None:
        from aexec.coordinator import COORDINATOR_TOPIC

        transport = await self._open_transport()
        await transport.broadcast(
            COORDINATOR_TOPIC, messages.Control("cancel", run_id=run_id).encode()
        )

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
        self, *, limit: int = 50, status: RunStatus | None = None
    ) -> list[RunRecord]:
        return await self.store.list_runs(limit=limit, status=status)

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        return await self.store.get_steps(run_id)

    async def get_events(
        self, run_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[Event]:
        return await self.store.get_events(run_id, after=after, limit=limit)

    async def load_result(self, record: RunRecord) -> Any:
        """The decoded result of a succeeded run; raises RunFailed for a failed or cancelled one."""
        if record.status is not RunStatus.SUCCEEDED:
            if not record.status.finished:
                raise AexecError(f"run {record.run_id} has not finished ({record.status})")
            steps = await self.store.get_steps(record.run_id)
            errors = {s.key: s.error for s in steps if s.error is not None and s.status == "failed"}
            message = None if errors else f"run {record.run_id} {record.status}"
            raise RunFailed(record.run_id, str(record.status), errors, message)
        return await self._decode_result(record.result)

    async def _decode_result(self, result: bytes | None) -> Any:
        return None if result is None else await load_value(self.objects, result)
