"""The worker: consumes step messages, runs step code, publishes completions.

Async steps run concurrently on the worker's loop; sync steps run in a bounded thread pool
(created on first use, so a worker serving only async steps starts no thread), or in a
process pool for CPU-bound code.  Bad input never takes the worker down: a malformed
message is dead-lettered; a step name the worker does not serve, undecodable inputs or an
unencodable return value become a failed completion (an error event at the coordinator)
and the worker keeps serving.

Delivery and liveness: a step message stays unacked while its step runs, so a worker that
dies is replaced by the broker's redelivery.  A step that runs longer than ``ack_after``
is reported in a heartbeat to its coordinator and *then* acked — from there on the
coordinator's lease on the worker's heartbeats is what protects it, so a step may outlive
RabbitMQ's ``consumer_timeout`` without being requeued and run twice.

The worker's tasks — one per step attempt, the progress reports and the heartbeat loop —
belong to one :class:`~aexec.background.Background` group, opened by ``async with`` and
closed by :meth:`Worker.drain`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aexec import codec, context, messages
from aexec.background import Background
from aexec.config import Settings
from aexec.dsl import StepDef
from aexec.errors import (
    AexecError,
    CodecError,
    InputError,
    ObjectStoreError,
    StepTimeoutError,
    UnknownStepError,
)
from aexec.objects import ObjectStore, load_value
from aexec.pool import ProcessPool
from aexec.transport import Delivery, Subscription, Transport
from aexec.types import ErrorInfo
from aexec.wire import CONTROL_TOPIC, step_queue

log = logging.getLogger(__name__)


def default_worker_name() -> str:
    return f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:4]}"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """``concurrency`` bounds in-flight steps per queue (it is the prefetch).

    Durations are float seconds.  ``pool`` is ``"thread"`` or ``"process"`` (sync steps in
    child processes that load ``modules``).
    """

    name: str = field(default_factory=default_worker_name)
    concurrency: int = 100
    thread_pool_size: int = 0  # 0: min(32, cpu_count + 4)
    pool: str = "thread"
    process_pool_size: int = 0  # 0: cpu_count
    modules: tuple[str, ...] = ()
    inline_threshold: int = 64 * 1024
    heartbeat_interval: float = 1.0
    ack_after: float = 10.0
    progress_interval: float = 0.1  # at most one progress message per step per interval
    publish_retry_max: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> WorkerConfig:
        """The worker knobs that ``settings`` carries (concurrency, thread pool size, inline
        threshold, heartbeat interval, ack_after); ``overrides`` set any field."""
        values: dict[str, Any] = {
            "concurrency": settings.concurrency,
            "thread_pool_size": settings.thread_pool_size,
            "inline_threshold": settings.inline_threshold,
            "heartbeat_interval": settings.heartbeat_interval,
            "ack_after": settings.ack_after,
        }
        return cls(**(values | overrides))


AttemptKey = tuple[str, str, int]
"""``(run id, step key, attempt)``: one attempt of one step, as heartbeats name it."""


@dataclass(slots=True, eq=False)
class _Attempt:
    msg: messages.StepMessage
    delivery: Delivery
    started_at: float
    last_progress: float = 0.0
    task: asyncio.Task[None] | None = None
    acked: bool = False
    reported: bool = False  # named in a heartbeat the coordinator has received
    discard: bool = False  # cancelled because its run was: ack, do not requeue


class Worker:
    """Serves ``steps`` (by name) from the queues it is told to consume."""

    def __init__(
        self,
        transport: Transport,
        objects: ObjectStore,
        steps: Mapping[str, StepDef[Any, Any]] | None = None,
        config: WorkerConfig | None = None,
    ) -> None:
        self.transport = transport
        self.objects = objects
        self.config = config or WorkerConfig()
        self.name = self.config.name
        self.instance = uuid.uuid4().hex[:12]  # this process's id: liveness is per instance
        self.started_at = time.time()
        self._steps: dict[str, StepDef[Any, Any]] = {}
        self._subscriptions: dict[str, Subscription] = {}
        self._control: Subscription | None = None
        self._background: Background | None = None
        self._running: dict[AttemptKey, _Attempt] = {}
        self._threads: ThreadPoolExecutor | None = None
        self._processes: ProcessPool | None = None
        self._last_heartbeat = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self.terminated = asyncio.Event()
        if steps:
            self.add_steps(steps.values())

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Worker:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        background = Background(f"worker {self.name}", on_failure=self._failed)
        await background.__aenter__()
        self._background = background
        background.start_loop(self._heartbeat_loop(), name="aexec-heartbeat")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.drain()

    @property
    def queues(self) -> list[str]:
        return sorted(self._subscriptions)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def step_names(self) -> list[str]:
        return sorted(self._steps)

    @property
    def prefetch(self) -> int:
        """Deliveries taken from the broker at once: as many as can run at once, so that
        nothing waits inside the worker and the broker's priorities order what waits.
        With only sync steps that is the size of their pool, not ``concurrency``."""
        concurrency = self.config.concurrency
        if not self._steps or any(s.is_async for s in self._steps.values()):
            return concurrency
        if self.config.pool == "process":
            return min(concurrency, self.config.process_pool_size or (os.cpu_count() or 1))
        return min(concurrency, self._thread_pool_size())

    def _thread_pool_size(self) -> int:
        return self.config.thread_pool_size or min(32, (os.cpu_count() or 1) + 4)

    def add_steps(self, steps: Iterable[StepDef[Any, Any]]) -> None:
        """Serve these step definitions (remote declarations without code are ignored)."""
        for step in steps:
            if step.fn is not None:
                self._steps[step.name] = step

    async def serve(self, queue: str) -> None:
        """Start consuming the step queue for ``queue`` (idempotent)."""
        if queue in self._subscriptions:
            return
        if self._background is None:
            raise AexecError(f"worker {self.name} is not running (use `async with`)")
        name = step_queue(queue)
        await self.transport.declare_queue(name)
        self._subscriptions[queue] = await self.transport.consume(
            name, self._on_delivery, prefetch=self.prefetch
        )
        log.info("worker %s serving queue %s", self.name, queue)

    async def listen_for_control(self) -> None:
        """Answer ``aexec worker list`` and obey ``aexec worker terminate`` (broadcasts)."""
        if self._control is None:
            self._control = await self.transport.subscribe(CONTROL_TOPIC, self._on_control)

    async def stop_consuming(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, {}
        for subscription in subscriptions.values():
            await subscription.cancel()

    def cancel_run(self, run_id: str) -> int:
        """Cancel this worker's in-flight attempts of ``run_id``; returns how many."""
        cancelled = 0
        for (rid, _, _), attempt in list(self._running.items()):
            if rid == run_id and attempt.task is not None:
                attempt.discard = True
                attempt.task.cancel()
                cancelled += 1
        return cancelled

    async def drain(self, grace: float | None = None) -> None:
        """Stop consuming and let in-flight steps finish (for at most ``grace`` seconds:
        the rest are cancelled and requeued); then stop the heartbeat and the pools.
        Raises what stopped the worker's tasks, if one of them failed (a bug)."""
        background = self._background
        try:
            await self.stop_consuming()
            if background is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        await background.drain()
                for attempt in list(self._running.values()):
                    if attempt.task is not None:
                        attempt.task.cancel()
                await background.drain()  # the cancelled ones put their deliveries back
            await self._stop_listening()
        finally:
            self._background = None
            if background is not None:
                await background.aclose()  # the heartbeat stops last
            self._close_pools()

    async def abort(self) -> None:
        """Stop at once, as a crash would: steps in flight are cancelled and publish no
        completion (their unacked deliveries go back to the broker), heartbeats stop, and
        the consumers are dropped.  Leaving the ``async with`` afterwards does nothing."""
        background, self._background = self._background, None
        try:
            if background is not None:
                await background.aclose()
        finally:
            await self.stop_consuming()
            await self._stop_listening()
            self._close_pools()

    def _close_pools(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None
        if self._processes is not None:
            self._processes.shutdown()
            self._processes = None

    async def _stop_listening(self) -> None:
        if self._control is not None:
            await self._control.cancel()
            self._control = None

    async def _failed(self, failure: Exception) -> None:
        """A task failed (a bug) and the group cancelled the others, whose deliveries went
        back to their queues: consume nothing more, and ask whoever runs the worker to stop
        it (:attr:`terminated`)."""
        await self.stop_consuming()
        await self._stop_listening()
        self.terminated.set()

    # -- deliveries ------------------------------------------------------------------------

    async def _on_delivery(self, delivery: Delivery) -> None:
        background = self._background
        if background is None:
            return  # stopping: unacked, the delivery goes back when its consumer is cancelled
        try:
            msg = messages.decode(delivery.body)
        except CodecError as exc:
            log.error("worker %s dead-lettered a malformed message: %s", self.name, exc)
            await self._settle(delivery, requeue=False, reject=True)
            return
        if not isinstance(msg, messages.StepMessage):
            log.error(
                "worker %s dead-lettered a %s message on a step queue",
                self.name,
                type(msg).__name__,
            )
            await self._settle(delivery, requeue=False, reject=True)
            return
        step = self._steps.get(msg.name)
        if step is None:
            error = ErrorInfo.from_exception(
                UnknownStepError(
                    f"worker {self.name} does not serve step {msg.name!r} "
                    f"(it serves: {', '.join(sorted(self._steps)) or 'nothing'})"
                ),
                retryable=False,
            )
            log.error("worker %s: %s", self.name, error.message)
            now = time.time()
            await self._complete(msg, None, error, now, now)
            await self._settle(delivery, requeue=False, reject=True)
            return
        key: AttemptKey = (msg.run_id, msg.step_key, msg.attempt)
        if key in self._running:  # the broker redelivered what this worker already runs
            await self._settle(delivery)
            return
        attempt = _Attempt(msg, delivery, time.time())
        try:
            attempt.task = background.start_work(self._execute(attempt, step))
        except AexecError:
            return  # the worker is stopping: unacked, the delivery goes back
        self._running[key] = attempt

    async def _settle(
        self, delivery: Delivery, *, requeue: bool = False, reject: bool = False
    ) -> None:
        """Ack or reject; a delivery whose channel died meanwhile is redelivered anyway."""
        try:
            if reject:
                await delivery.reject(requeue=requeue)
            else:
                await delivery.ack()
        except AexecError as exc:
            log.info(
                "worker %s could not settle a delivery (it will be redelivered): %s", self.name, exc
            )

    async def _execute(self, attempt: _Attempt, step: StepDef[Any, Any]) -> None:
        msg = attempt.msg
        key: AttemptKey = (msg.run_id, msg.step_key, msg.attempt)
        output: bytes | None = None
        error: ErrorInfo | None = None
        try:
            output = await self._run(msg, step, attempt)
        except asyncio.CancelledError:
            self._running.pop(key, None)
            # Our own cancellation: a cancelled run's attempt is dropped, a stopping
            # worker's attempt goes back to its queue for another worker.
            if not attempt.acked:
                await self._settle(
                    attempt.delivery, requeue=not attempt.discard, reject=not attempt.discard
                )
            raise
        except _StepFailure as failure:
            error = failure.info
        except Exception as exc:  # the step's own exception, whatever it is
            error = ErrorInfo.from_exception(exc)
        finally:
            self._running.pop(key, None)
        await self._complete(msg, output, error, attempt.started_at, time.time())
        if not attempt.acked:
            attempt.acked = True
            await self._settle(attempt.delivery)

    async def _run(
        self, msg: messages.StepMessage, step: StepDef[Any, Any], attempt: _Attempt
    ) -> bytes:
        try:
            inputs = [await load_value(self.objects, blob) for blob in msg.inputs]
        except (CodecError, ValueError, TypeError) as exc:
            raise _StepFailure(
                ErrorInfo.from_exception(
                    InputError(f"cannot decode inputs: {exc}"), retryable=False
                )
            ) from None
        except ObjectStoreError as exc:
            raise _StepFailure(
                ErrorInfo(type(exc).__name__, f"cannot load an input: {exc}")
            ) from None
        if self.config.pool == "process" and not step.is_async:
            encoded = await self._run_in_process(msg, inputs)
        else:
            encoded = await self._run_here(msg, step, attempt, inputs)
        if len(encoded) > self.config.inline_threshold:
            object_key = f"outputs/{msg.run_id}/{msg.step_key}/{msg.attempt}"
            try:
                await self.objects.put(object_key, encoded)
            except ObjectStoreError as exc:
                raise _StepFailure(
                    ErrorInfo(type(exc).__name__, f"cannot store output: {exc}")
                ) from None
            encoded = codec.encode(codec.ObjectRef(object_key))
        return encoded

    async def _run_here(
        self,
        msg: messages.StepMessage,
        step: StepDef[Any, Any],
        attempt: _Attempt,
        inputs: list[Any],
    ) -> bytes:
        try:
            args, kwargs = codec.decode(msg.call, inputs=inputs)
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise CodecError("call template is not [args, kwargs]")
        except (CodecError, ValueError, TypeError) as exc:
            raise _StepFailure(
                ErrorInfo.from_exception(
                    InputError(f"cannot decode the call: {exc}"), retryable=False
                )
            ) from None
        ctx = context.StepContext(
            msg.run_id,
            msg.step_key,
            msg.attempt,
            msg.name,
            functools.partial(self._progress_sink, attempt),
        )
        fn = step.fn
        assert fn is not None
        try:
            if step.is_async:
                token = context.bind(ctx)
                try:
                    if msg.timeout is None:
                        result = await fn(*args, **kwargs)
                    else:
                        async with asyncio.timeout(msg.timeout):
                            result = await fn(*args, **kwargs)
                finally:
                    context.unbind(token)
            else:
                future = asyncio.get_running_loop().run_in_executor(
                    self._thread_pool(),
                    functools.partial(context.run_with, ctx, fn, *args, **kwargs),
                )
                result = await _within(future, msg.timeout)
        except TimeoutError:
            ctx.cancel()
            raise StepTimeoutError(
                f"step {msg.step_key!r} timed out after {msg.timeout:g} s"
            ) from None
        try:
            return codec.encode(result)
        except CodecError as exc:
            raise _StepFailure(
                ErrorInfo(
                    "CodecError",
                    f"step {msg.step_key!r} returned a value that cannot be encoded: {exc}",
                    retryable=False,
                )
            ) from None

    async def _run_in_process(self, msg: messages.StepMessage, inputs: list[Any]) -> bytes:
        if self._processes is None:
            size = self.config.process_pool_size or (os.cpu_count() or 1)
            self._processes = ProcessPool(self.config.modules, size)
        blobs = [codec.encode(value) for value in inputs]
        try:
            output, error = await _within(
                self._processes.run(
                    msg.name, msg.call, blobs, msg.run_id, msg.step_key, msg.attempt
                ),
                msg.timeout,
            )
        except TimeoutError:
            raise StepTimeoutError(
                f"step {msg.step_key!r} timed out after {msg.timeout:g} s"
            ) from None
        if error is not None:
            raise _StepFailure(error)
        if not isinstance(output, bytes):
            raise _StepFailure(ErrorInfo("InternalError", "process pool returned no output"))
        return output

    async def _complete(
        self,
        msg: messages.StepMessage,
        output: bytes | None,
        error: ErrorInfo | None,
        started: float,
        finished: float,
    ) -> None:
        completion = messages.Completion(
            msg.run_id,
            msg.step_key,
            msg.attempt,
            output,
            error,
            self.name,
            started,
            finished,
            self.instance,
        )
        await self._publish_until_sent(msg.reply_to, completion.encode())

    async def _publish_until_sent(self, queue: str, body: bytes) -> None:
        """Publish, retrying while the broker is away: a completion is never dropped."""
        delay = 0.05
        while True:
            try:
                await self.transport.publish(queue, body)
                return
            except AexecError as exc:
                log.warning(
                    "worker %s: publish to %s failed, retrying in %.2fs: %s",
                    self.name,
                    queue,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.publish_retry_max)

    def _thread_pool(self) -> ThreadPoolExecutor:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(
                max_workers=self._thread_pool_size(), thread_name_prefix="aexec-step"
            )
        return self._threads

    # -- progress, heartbeats, control -----------------------------------------------------

    def _progress_sink(
        self, attempt: _Attempt, fraction: float | None, message: str | None
    ) -> None:
        """Called by ``StepContext.progress``; may run in a step's thread."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._send_progress(attempt, fraction, message)
        else:
            loop.call_soon_threadsafe(self._send_progress, attempt, fraction, message)

    def _send_progress(
        self, attempt: _Attempt, fraction: float | None, message: str | None
    ) -> None:
        if fraction is None and message is None:
            return  # a bare heartbeat: the periodic heartbeat already reports this attempt
        now = time.time()
        final = fraction is not None and fraction >= 1.0
        if now - attempt.last_progress < self.config.progress_interval and not final:
            return
        background = self._background
        if background is None or not background.running:
            return  # a step thread that outlived its attempt, reporting after the worker stopped
        attempt.last_progress = now
        msg = attempt.msg
        body = messages.Progress(
            msg.run_id, msg.step_key, msg.attempt, self.name, now, fraction, message, self.instance
        ).encode()
        with contextlib.suppress(AexecError):  # unless a task failed and the worker is stopping
            background.start_work(self._publish_quietly(msg.reply_to, body))

    async def _publish_quietly(self, queue: str, body: bytes) -> bool:
        try:
            await self.transport.publish(queue, body)
            return True
        except AexecError as exc:
            log.warning("worker %s could not report to %s: %s", self.name, queue, exc)
            return False

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            self._last_heartbeat = time.monotonic()
            if self._running:
                await self.heartbeat()

    async def heartbeat(self) -> None:
        """Report every in-flight attempt to its coordinator; then ack the long ones."""
        now = time.time()
        by_reply: dict[str, list[_Attempt]] = {}
        for attempt in list(self._running.values()):
            by_reply.setdefault(attempt.msg.reply_to, []).append(attempt)
        for reply_to, attempts in by_reply.items():
            running = [(a.msg.run_id, a.msg.step_key, a.msg.attempt) for a in attempts]
            if not await self._publish_quietly(
                reply_to, messages.Heartbeat(self.name, now, running, self.instance).encode()
            ):
                continue
            for attempt in attempts:
                attempt.reported = True
                if not attempt.acked and now - attempt.started_at >= self.config.ack_after:
                    # The coordinator now knows who runs it: its lease protects the step,
                    # and the broker's consumer_timeout no longer applies.
                    attempt.acked = True
                    await self._settle(attempt.delivery)

    async def _on_control(self, delivery: Delivery) -> None:
        try:
            msg = messages.decode(delivery.body)
        except CodecError as exc:
            log.warning("worker %s ignored a malformed control message: %s", self.name, exc)
            return
        if not isinstance(msg, messages.Control):
            return
        if msg.target is not None and msg.target != self.name:
            return
        if msg.command == "ping" and msg.reply_to:
            info = messages.WorkerInfo(
                self.name,
                socket.gethostname(),
                os.getpid(),
                self.queues,
                self.in_flight,
                time.monotonic() - self._last_heartbeat,
                self.started_at,
            )
            await self._publish_quietly(msg.reply_to, info.encode())
        elif msg.command == "cancel" and msg.run_id is not None:
            self.cancel_run(msg.run_id)
        elif msg.command == "terminate":
            log.warning("worker %s asked to terminate: draining", self.name)
            self.terminated.set()


async def _within(awaitable: Awaitable[Any], seconds: float | None) -> Any:
    if seconds is None:
        return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


class _StepFailure(Exception):
    """A failure of the step's plumbing (inputs, output), carried as an ErrorInfo."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


__all__ = ["Worker", "WorkerConfig", "default_worker_name"]
