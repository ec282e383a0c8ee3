"""The composition root and library facade: adapters are chosen here, by URL, and only here.

``Executor()`` is the embedded mode: in-memory transport, an in-process worker on the same
event loop, the SQLite store and a directory for large outputs under ``AEXEC_HOME``.
``Executor.from_url(broker="amqp://...")`` drives runs through RabbitMQ with workers
elsewhere.  Either way it runs on the caller's event loop and starts no thread (sync steps
of the embedded worker run in a bounded pool created on first use).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aexec import codec
from aexec.config import Settings
from aexec.coordinator import ActiveRun, Coordinator, CoordinatorConfig
from aexec.dsl import CompiledPipeline, Pipeline, StepDef
from aexec.errors import AexecError, ConfigError, PlanError, RunFailed
from aexec.events import Event
from aexec.objects import ObjectStore
from aexec.plan import Plan
from aexec.store import RunRecord, StepRecord, Store
from aexec.transport import Transport
from aexec.types import RunStatus
from aexec.worker import Worker, WorkerConfig


def make_store(url: str) -> Store:
    scheme = url.split(":", 1)[0]
    if scheme == "memory":
        from aexec.store.memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        from aexec.store.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    raise ConfigError(f"store backend {scheme}:// is not available in this version of aexec")


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


def make_transport(url: str | None) -> Transport:
    if url is None or url.startswith("memory:"):
        from aexec.transport.memory import MemoryTransport

        return MemoryTransport()
    from aexec.transport.amqp import AmqpTransport

    return AmqpTransport.from_url(url)


class Run:
    """A submitted run: await its result, stream its events, cancel it."""

    def __init__(self, executor: Executor, active: ActiveRun) -> None:
        self._executor = executor
        self._active = active
        self.run_id = active.run_id
        self.plan: Plan = active.plan

    @property
    def status(self) -> RunStatus:
        return self._active.status

    async def wait(self) -> RunRecord:
        """Wait for the run to end; return its final record (never raises RunFailed)."""
        await asyncio.shield(self._active.done)
        record = await self._executor.get_run(self.run_id)
        if record is None:  # pragma: no cover - the store lost a run it acknowledged
            raise AexecError(f"run {self.run_id} vanished from the store")
        return record

    async def result(self) -> Any:
        """The pipeline's result; raises :class:`~aexec.errors.RunFailed` unless it succeeded."""
        record = await self.wait()
        return await self._executor.load_result(record)

    def events(self) -> AsyncIterator[Event]:
        """Every event of the run, from its submission until its end."""
        return self._executor._events(self.run_id)

    async def cancel(self) -> None:
        """Cancel the run: unfinished steps are cancelled and the run ends ``cancelled``."""
        self._executor._cancel(self.run_id)

    def __repr__(self) -> str:
        return f"<Run {self.run_id} {self.plan.pipeline} {self.status}>"


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
            store = make_store(self.settings.store_url)
            await store.open()
            stack.push_async_callback(store.close)
            objects = make_objects(self.settings.objects_url)
            await objects.open()
            stack.push_async_callback(objects.close)
        except BaseException:
            await stack.aclose()
            raise
        self._stack, self._store, self._objects = stack, store, objects
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        try:
            if self._coordinator is not None and self.settings.embedded:
                await self._cancel_active()
        finally:
            await stack.aclose()
            self._store = self._objects = self._transport = None
            self._coordinator = self._worker = None

    async def _cancel_active(self) -> None:
        coordinator = self._coordinator
        assert coordinator is not None
        pending = list(coordinator._runs.values())
        for run in pending:
            coordinator.cancel(run.run_id)
            if self._worker is not None:
                self._worker.cancel_run(run.run_id)
        if pending:
            await asyncio.wait([asyncio.shield(run.done) for run in pending], timeout=5.0)

    async def _start_engine(self) -> Coordinator:
        async with self._engine_lock:
            if self._coordinator is not None:
                return self._coordinator
            stack, store = self._stack, self._store
            if stack is None or store is None or self._objects is None:
                raise AexecError("the executor is not open (use `async with Executor() as ex`)")
            settings = self.settings
            transport = make_transport(settings.broker)
            await transport.open()
            stack.push_async_callback(transport.close)
            self._transport = transport
            worker: Worker | None = None
            if settings.embedded:
                worker = Worker(
                    transport,
                    self._objects,
                    None,
                    WorkerConfig(
                        name="embedded",
                        concurrency=settings.concurrency,
                        thread_pool_size=settings.thread_pool_size,
                        inline_threshold=settings.inline_threshold,
                        heartbeat_interval=settings.heartbeat_interval,
                    ),
                )
                worker.add_steps(self._extra_steps)
                # Exits run in reverse: the worker drains before the coordinator stops.
                coordinator = Coordinator(
                    transport,
                    store,
                    CoordinatorConfig(fail_fast=settings.fail_fast, durable_replies=False),
                    on_queue=worker.serve,
                )
                await stack.enter_async_context(coordinator)
                await stack.enter_async_context(worker)
            else:
                coordinator = Coordinator(
                    transport, store, CoordinatorConfig(fail_fast=settings.fail_fast)
                )
                await stack.enter_async_context(coordinator)
            self._worker = worker
            self._coordinator = coordinator
            return coordinator

    def _cancel(self, run_id: str) -> None:
        self._require_coordinator().cancel(run_id)
        if self._worker is not None:
            self._worker.cancel_run(run_id)

    def _require_coordinator(self) -> Coordinator:
        if self._coordinator is None:
            raise AexecError("no run has been submitted through this executor")
        return self._coordinator

    # -- submitting ------------------------------------------------------------------------

    async def submit(
        self, pipeline: Pipeline | CompiledPipeline, /, *, priority: int = 0, **params: Any
    ) -> Run:
        """Compile ``pipeline`` with ``params`` and start a run of it."""
        if isinstance(pipeline, Pipeline):
            compiled = pipeline.compile(**params)
        elif params:
            raise PlanError("parameters are bound at compile time: pass the Pipeline, not a plan")
        else:
            compiled = pipeline
        coordinator = await self._start_engine()
        if self._worker is not None:
            missing = sorted(
                name
                for name, step in compiled.steps.items()
                if step.fn is None and name not in {s.name for s in self._extra_steps}
            )
            if missing:
                raise PlanError(
                    f"remote step {missing[0]!r} has no implementation in embedded mode: "
                    "run with a broker and a worker that serves it"
                )
            self._worker.add_steps(compiled.steps.values())
        active = await coordinator.submit(compiled.plan, priority=priority)
        return Run(self, active)

    # -- reading ---------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        if self._store is None:
            raise AexecError("the executor is not open (use `async with Executor() as ex`)")
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
            raise RunFailed(
                record.run_id,
                str(record.status),
                errors,
                None
                if errors
                else f"run {record.run_id} {record.status}: {record.error or ''}".strip(),
            )
        if record.result is None:
            return None
        value, has_refs = codec.decode_with_refs(record.result)
        if not has_refs:
            return value
        loaded = {}
        for ref in codec.collect_refs(value, []):
            loaded[ref.key] = codec.decode(await self.objects.get(ref.key))
        return codec.map_refs(value, lambda ref: loaded[ref.key])

    async def _events(self, run_id: str) -> AsyncIterator[Event]:
        if self._coordinator is not None:
            async for event in self._coordinator.events(run_id):
                yield event
            return
        for event in await self.store.get_events(run_id):
            yield event
