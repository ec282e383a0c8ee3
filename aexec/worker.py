"""The worker: consumes step messages, runs step code, publishes completions.

Async steps run concurrently on the worker's loop; sync steps run in a bounded thread pool
(created on first use, so a worker serving only async steps starts no thread), or in a
process pool for CPU-bound code (:mod:`aexec.runner` runs each attempt's code).  Bad input
never takes the worker down: a malformed message is dead-lettered; a step name the worker
does not serve, undecodable inputs or an unencodable return value become a failed
completion (an error event at the coordinator) and the worker keeps serving.

Delivery and liveness: a step message stays unacked while its step runs, so the broker
gives back the message of a worker that dies.  A step that runs longer than ``ack_after``
is reported in a heartbeat to its coordinator and *then* acked — from there on the
coordinator's lease on the worker's heartbeats is what protects it, so a step may outlive
RabbitMQ's ``consumer_timeout`` without being requeued and run twice.

At most once per attempt: a delivery the broker marks redelivered may have started on a
worker that died or lost its connection, so a worker never runs one (unless it runs that
very attempt already: then it is the broker's ``consumer_timeout`` and the copy is acked).
It reports the attempt lost to its coordinator (:class:`~aexec.messages.AttemptLost`),
which dispatches a new attempt, and acks it.  The same report covers an attempt whose
child process died (``--pool process``: that child is replaced) and one still running when
a stopping worker's grace ran out.  A cancelled sync step in a child process that does not
return within ``cancel_grace`` seconds is killed with its child (:mod:`aexec.pool`).

Ended runs: from start-up, before it consumes any step queue, a worker follows the
retained :data:`~aexec.wire.RUNS_ENDED_TOPIC`.  Step messages of a run that has ended are
acked and skipped; the attempts in flight of a cancelled run are cancelled.

Draining is not dying: :meth:`Worker.drain` stops its consumers without giving back what
they hold, lets the steps in flight finish and deliver their completions (for at most the
drain grace), and only then lets go of the broker.  A completion that can never be
delivered (its reply queue is gone: nobody can use it) is dropped with a warning and its
step message acked; one that fails for a while (the broker is away) is retried with
backoff until it is sent or the worker's grace runs out.

The worker's tasks — one per step attempt, the progress reports, the reports of lost
attempts and the heartbeat loop — belong to one :class:`~aexec.background.Background`
group, opened by ``async with`` and closed by :meth:`Worker.drain` or :meth:`Worker.abort`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aexec import capture, context, messages, outbox, tracing
from aexec.background import Background
from aexec.codec import DEFAULT_MAX_BODY
from aexec.config import DEFAULT_MAX_VALUE_SIZE, Settings
from aexec.dsl import StepDef
from aexec.ended import EndedRuns
from aexec.errors import AexecError, CodecError, UnknownStepError, UnroutableError
from aexec.metrics import WorkerMetrics
from aexec.objects import ObjectStore
from aexec.output import AttemptOutput, OutputBuffer, OutputLimits, encode_output
from aexec.pool import DEFAULT_CANCEL_GRACE
from aexec.runner import LostAttempt, StepFailure, StepRunner
from aexec.tracing import Tracing
from aexec.transport import Delivery, Subscription, Transport, handed
from aexec.types import ErrorInfo
from aexec.wire import CONTROL_TOPIC, RUNS_ENDED_TOPIC, step_queue, versioned

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
    max_value_size: int = DEFAULT_MAX_VALUE_SIZE  # the largest output a step may return
    heartbeat_interval: float = 1.0
    ack_after: float = 10.0
    output: OutputLimits = field(default_factory=OutputLimits)  # steps' logs, prints, progress
    publish_retry_max: float = 5.0
    coalesce: float = outbox.WINDOW  # how long a completion may wait to share a message; 0: never
    drain_grace: float = 60.0  # how long a stopping worker lets its steps finish
    cancel_grace: float = DEFAULT_CANCEL_GRACE  # a cancelled sync step in a child: killed after
    lost_report_timeout: float = 5.0  # how long a worker past its grace tries to report

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> WorkerConfig:
        """The worker knobs that ``settings`` carries (concurrency, thread pool size, inline
        threshold, max value size, heartbeat interval, ack_after, drain and cancel grace,
        coalescing);
        ``overrides`` set any field."""
        values: dict[str, Any] = {
            "concurrency": settings.concurrency,
            "thread_pool_size": settings.thread_pool_size,
            "inline_threshold": settings.inline_threshold,
            "max_value_size": settings.max_value_size,
            "heartbeat_interval": settings.heartbeat_interval,
            "ack_after": settings.ack_after,
            "drain_grace": settings.drain_grace,
            "cancel_grace": settings.cancel_grace,
            "coalesce": settings.coalesce,
            "output": OutputLimits.with_level(settings.step_log_level),
        }
        return cls(**(values | overrides))


HandOver = Callable[[str, messages.Completion], bool]
"""Takes a completion addressed to a reply queue in this process, or returns False."""

AttemptKey = tuple[str, str, int]
"""``(run id, step key, attempt)``: one attempt of one step, as heartbeats name it."""


OnCancel = Literal["requeue", "discard", "lost"]
"""What becomes of an attempt's delivery when the worker cancels the attempt: ``requeue``
(the worker aborts or failed: back to the broker, as after a crash), ``discard`` (its run
was cancelled: ack it) or ``lost`` (the worker stopped past its grace: report it lost)."""


@dataclass(slots=True, eq=False)
class _Attempt:
    msg: messages.StepMessage
    delivery: Delivery
    started_at: float
    output: AttemptOutput | None = None  # what its step reports, once it runs
    task: asyncio.Task[None] | None = None
    acked: bool = False
    reported: bool = False  # named in a heartbeat the coordinator has received
    sent: bool = False  # its completion is in the outbox, which settles its delivery
    on_cancel: OnCancel = "requeue"


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
        self._ended_runs: Subscription | None = None
        self._ended = EndedRuns()
        self._background: Background | None = None
        self._running: dict[AttemptKey, _Attempt] = {}
        self.outbox = outbox.Outbox(
            transport,
            self._start_sending,
            name=self.name,
            window=self.config.coalesce,
            retry_max=self.config.publish_retry_max,
        )
        self._runner = StepRunner(
            objects,
            pool=self.config.pool,
            threads=self._thread_pool_size(),
            processes=self._process_pool_size(),
            modules=self.config.modules,
            inline_threshold=self.config.inline_threshold,
            max_value_size=self.config.max_value_size,
            limits=self.config.output,
            cancel_grace=self.config.cancel_grace,
        )
        self._output = OutputBuffer(self.config.output, self._wake_output)
        self._flush_now = asyncio.Event()
        self._flushing = False
        self._capturing = False
        self._tracing: Tracing | None = None
        self._last_heartbeat = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self.terminated = asyncio.Event()
        self.metrics: WorkerMetrics | None = None  # counts finished attempts when set
        self._hand_over: HandOver | None = None
        self.handed = 0
        """Completions handed over in the process so far (see :meth:`hand_over_to`)."""
        self._consuming = False
        if steps:
            self.add_steps(steps.values())

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Worker:
        """Start the heartbeat, and read which runs ended (before consuming any step)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._tracing = tracing.load()
        background = Background(f"worker {self.name}", on_failure=self._failed)
        await background.__aenter__()
        self._background = background
        try:
            self._ended_runs = await self.transport.follow(RUNS_ENDED_TOPIC, self._on_run_ended)
        except BaseException:
            self._background = None
            await background.aclose()
            raise
        background.start_loop(self._heartbeat_loop(), name="aexec-heartbeat")
        limits = self.config.output
        capture.install(limits.level, streams=limits.capture_streams)
        self._capturing = True
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
    def consuming(self) -> bool:
        """True while it runs and takes steps from its queues (not once it drains)."""
        background = self._background
        return self._consuming and background is not None and background.running

    def in_flight_by_queue(self) -> dict[str, int]:
        """The attempts running now, per queue of their steps."""
        found = dict.fromkeys(self._subscriptions, 0)
        for attempt in self._running.values():
            step = self._steps.get(attempt.msg.name)
            if step is not None:
                found[step.queue] = found.get(step.queue, 0) + 1
        return found

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
            return min(concurrency, self._process_pool_size())
        return min(concurrency, self._thread_pool_size())

    def _thread_pool_size(self) -> int:
        return self.config.thread_pool_size or min(32, (os.cpu_count() or 1) + 4)

    def _process_pool_size(self) -> int:
        return self.config.process_pool_size or (os.cpu_count() or 1)

    def add_steps(self, steps: Iterable[StepDef[Any, Any]]) -> None:
        """Serve these step definitions (remote declarations without code are ignored)."""
        for step in steps:
            if step.fn is not None:
                self._steps[step.name] = step
                if step.version is not None:  # messages for that version name it
                    self._steps[versioned(step.name, step.version)] = step

    def hand_over_to(self, hand_over: HandOver) -> None:
        """Give the completions of attempts to ``hand_over``, a coordinator in this process
        (the embedded mode), as they are: it returns False for those it does not take,
        which are published as over a broker.  Only successful completions of attempts
        that reported nothing are handed over (see :meth:`_hands_over`); the step message
        is acked once its completion is handed over, as once it is published."""
        self._hand_over = hand_over

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
        self._consuming = True
        log.info("worker %s serving queue %s", self.name, queue)

    async def listen_for_control(self) -> None:
        """Answer ``aexec worker list`` and obey ``aexec worker terminate`` (broadcasts)."""
        if self._control is None:
            self._control = await self.transport.subscribe(CONTROL_TOPIC, self._on_control)

    async def stop_consuming(self) -> None:
        """Take no new step: the consumers stop, and keep the deliveries of the steps in
        flight until those are settled (see :meth:`drain`)."""
        self._consuming = False
        for subscription in list(self._subscriptions.values()):
            await subscription.stop()

    async def _drop_consumers(self) -> None:
        """Cancel the consumers: whatever they still hold unsettled goes back to the broker."""
        subscriptions, self._subscriptions = self._subscriptions, {}
        for subscription in subscriptions.values():
            await subscription.cancel()

    def cancel_run(self, run_id: str) -> int:
        """Cancel this worker's in-flight attempts of ``run_id`` (their deliveries are acked,
        no completion is sent); returns how many."""
        cancelled = 0
        for (rid, _, _), attempt in list(self._running.items()):
            if rid == run_id and attempt.task is not None:
                attempt.on_cancel = "discard"
                attempt.task.cancel()
                cancelled += 1
        return cancelled

    async def drain(self, grace: float | None = None) -> None:
        """Stop gracefully: take no new step, let the steps in flight finish, deliver their
        completions and ack them, for at most ``grace`` seconds (default: the config's
        ``drain_grace``); the attempts still running then are cancelled and reported lost
        (a new attempt runs elsewhere).  Then stop the heartbeat, the consumers and the
        pools.  Raises what stopped the worker's tasks, if one of them failed (a bug)."""
        grace = self.config.drain_grace if grace is None else grace
        background = self._background
        try:
            await self.stop_consuming()
            if background is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        await background.drain()
                for attempt in self._running.values():
                    if attempt.on_cancel == "requeue":
                        attempt.on_cancel = "lost"
                background.cancel_work()  # attempts, and reports or progress still retrying
                await background.drain()  # the cancelled attempts report themselves lost
            await self._drop_consumers()
            await self._stop_listening()
            log.info(
                "worker %s sent %d completion(s) in %d message(s), handed %d over in the process",
                self.name,
                self.outbox.completions,
                self.outbox.messages,
                self.handed,
            )
        finally:
            self._background = None
            try:
                if background is not None:
                    await background.aclose()  # the heartbeat stops last; raises a task's bug
            finally:
                self._close_pools()

    async def abort(self) -> None:
        """Stop at once, as a crash would: steps in flight are cancelled and publish no
        completion (their unacked deliveries go back to the broker), heartbeats stop, and
        the consumers are dropped; sync steps in child processes are killed at once, not
        after their cancel grace.  Leaving the ``async with`` afterwards does nothing."""
        background, self._background = self._background, None
        try:
            if background is not None:
                background.cancel_work()
                self._runner.close()  # the children die now, as with the worker
                await background.aclose()
        finally:
            await self._drop_consumers()
            await self._stop_listening()
            self._close_pools()

    def _close_pools(self) -> None:
        self._runner.close()
        if self._capturing:
            self._capturing = False
            capture.uninstall(streams=self.config.output.capture_streams)

    async def _stop_listening(self) -> None:
        control, self._control = self._control, None
        ended_runs, self._ended_runs = self._ended_runs, None
        for subscription in (control, ended_runs):
            if subscription is not None:
                await subscription.cancel()

    async def _failed(self, failure: Exception) -> None:
        """A task failed (a bug) and the group cancelled the others, whose deliveries went
        back to their queues: consume nothing more, and ask whoever runs the worker to stop
        it (:attr:`terminated`)."""
        await self._drop_consumers()
        await self._stop_listening()
        self.terminated.set()

    # -- deliveries ------------------------------------------------------------------------

    async def _on_delivery(self, delivery: Delivery) -> None:
        background = self._background
        if background is None:
            return  # stopping: unacked, the delivery goes back when its consumer is cancelled
        msg = handed(delivery)  # from a coordinator in this process, as it is
        try:
            if msg is None:
                msg = messages.decode(delivery.body)
        except CodecError as exc:
            log.error("worker %s dead-lettered a malformed message: %s", self.name, exc)
            await self._settle(delivery, reject=True, reason=f"malformed: {exc}")
            return
        if not isinstance(msg, messages.StepMessage):
            log.error(
                "worker %s dead-lettered a %s message on a step queue",
                self.name,
                type(msg).__name__,
            )
            reason = f"a {getattr(msg, 'KIND', type(msg).__name__)} message on a step queue"
            await self._settle(delivery, reject=True, reason=reason)
            return
        if msg.run_id in self._ended:
            log.info(
                "worker %s skipped step %s (attempt %d) of run %s: the run has ended",
                self.name,
                msg.step_key,
                msg.attempt,
                msg.run_id,
            )
            await self._settle(delivery)
            return
        key: AttemptKey = (msg.run_id, msg.step_key, msg.attempt)
        if key in self._running:
            # The broker took the delivery back (its consumer_timeout closed the channel)
            # and redelivered it here, where the attempt runs: this copy is a duplicate.
            await self._settle(delivery)
            return
        if delivery.redelivered:
            # It may have started on a worker that died or lost its connection: never
            # start it again.  The coordinator decides (a new attempt, or nothing if the
            # attempt runs elsewhere still).
            with contextlib.suppress(AexecError):  # stopping: the delivery goes back
                background.start_work(self._give_up(msg, delivery, "redelivered"))
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
            completion = messages.Completion(
                msg.run_id,
                msg.step_key,
                msg.attempt,
                None,
                error,
                self.name,
                now,
                now,
                self.instance,
            )
            await self._send(msg, completion.encode(), "completion")
            await self._settle(delivery, reject=True, reason=f"UnknownStepError: {error.message}")
            return
        try:
            attempt = _Attempt(msg, delivery, time.time())
            attempt.task = background.start_work(self._execute(attempt, step))
        except AexecError:
            return  # the worker is stopping: unacked, the delivery goes back
        self._running[key] = attempt

    async def _on_run_ended(self, delivery: Delivery) -> None:
        """A run ended: skip its steps from now on; cancel its attempts if it was
        cancelled."""
        try:
            msg = messages.decode(delivery.body)
        except CodecError as exc:
            log.warning("worker %s ignored a malformed announcement: %s", self.name, exc)
            return
        if not isinstance(msg, messages.RunEnded):
            return
        if self._ended.add(msg.run_id, msg.ts, len(delivery.body)) and msg.status == "cancelled":
            cancelled = self.cancel_run(msg.run_id)
            if cancelled:
                log.info(
                    "worker %s cancelled %d attempt(s) of cancelled run %s",
                    self.name,
                    cancelled,
                    msg.run_id,
                )

    async def _settle(
        self,
        delivery: Delivery,
        *,
        requeue: bool = False,
        reject: bool = False,
        reason: str | None = None,
    ) -> None:
        """Ack or reject (dead-letter, with ``reason``, unless ``requeue``); a delivery whose
        channel died meanwhile is redelivered anyway."""
        try:
            if reject:
                await delivery.reject(requeue=requeue, reason=reason)
            else:
                await delivery.ack()
        except AexecError as exc:
            log.info(
                "worker %s could not settle a delivery (it will be redelivered): %s", self.name, exc
            )

    async def _execute(self, attempt: _Attempt, step: StepDef[Any, Any]) -> None:
        """Run one attempt, deliver its outcome and settle its delivery.  The attempt stays
        in :attr:`_running` (heartbeats name it) until its delivery is settled."""
        msg = attempt.msg
        key = (msg.run_id, msg.step_key, msg.attempt)
        context.bind_attempt(*key)  # the worker's own log lines about it name it
        try:
            await self._attempt(attempt, step)
        except asyncio.CancelledError:
            await self._cancelled(attempt)
            raise
        finally:
            self._running.pop(key, None)
            output = attempt.output
            if output is not None and not output.closed:
                output.finish()  # what is left of a cancelled attempt is dropped

    async def _attempt(self, attempt: _Attempt, step: StepDef[Any, Any]) -> None:
        msg = attempt.msg
        output: bytes | None = None
        error: ErrorInfo | None = None
        reported = attempt.output = self._output.attempt(msg)
        try:
            if self._tracing is None:
                output = await self._runner.run(msg, step, reported)
            else:
                key = (msg.run_id, msg.step_key, msg.attempt)
                with self._tracing.step(msg.trace, *key, self.name):
                    output = await self._runner.run(msg, step, reported)
        except asyncio.CancelledError as exc:
            if _cancelling():
                raise  # the worker's own cancellation of the attempt
            error = ErrorInfo.from_exception(exc)  # the step's own: a failure like another
        except LostAttempt as lost:
            if self.metrics is not None:
                self.metrics.finished(step.queue, step.name, "lost", 0.0)
            await self._give_up(msg, attempt.delivery, lost.reason)
            attempt.acked = True
            return
        except StepFailure as failure:
            error = failure.info
        except Exception as exc:  # the step's own exception, whatever it is
            error = ErrorInfo.from_exception(exc)
        await self._send_last_output(reported)
        completion = messages.Completion(
            msg.run_id,
            msg.step_key,
            msg.attempt,
            output,
            error,
            self.name,
            attempt.started_at,
            time.time(),
            self.instance,
        )
        if self.metrics is not None:
            outcome = "succeeded" if error is None else "failed"
            seconds = completion.finished_at - attempt.started_at
            self.metrics.finished(step.queue, step.name, outcome, seconds)
        delivery = None if attempt.acked else attempt.delivery
        attempt.acked = attempt.sent = True  # from here on the outbox settles the delivery
        if self._hands_over(msg.reply_to, completion, reported):
            if delivery is not None:
                await self._settle(delivery)
            return
        await self.outbox.send(msg.reply_to, completion, delivery)

    def _hands_over(
        self, reply_to: str, completion: messages.Completion, output: AttemptOutput
    ) -> bool:
        """Hand ``completion`` to a coordinator in this process, if there is one for
        ``reply_to`` (see :meth:`hand_over_to`) and nothing the completion must follow in
        the reply queue: what its attempt reported went (or goes) there, so it follows
        that; a failure goes there too, as does one that might not fit in a message."""
        hand_over = self._hand_over
        if (
            hand_over is None
            or output.reported
            or completion.error is not None
            or not _fits(completion)
            or not hand_over(reply_to, completion)
        ):
            return False
        self.handed += 1
        return True

    async def _cancelled(self, attempt: _Attempt) -> None:
        """The worker cancelled ``attempt``: report it lost if ``on_cancel`` says so (within
        ``lost_report_timeout``: else the broker or the coordinator's lease on this worker's
        heartbeats gives it back), and settle its delivery."""
        if attempt.sent:
            return  # finished: the outbox publishes its completion and settles its delivery
        requeue = attempt.on_cancel == "requeue"
        if attempt.on_cancel == "lost":
            try:
                async with asyncio.timeout(self.config.lost_report_timeout):
                    await self._report_lost(attempt.msg, "stopped")
            except TimeoutError:
                requeue = True
        if not attempt.acked:
            attempt.acked = True
            await self._settle(attempt.delivery, requeue=requeue, reject=requeue)

    async def _give_up(self, msg: messages.StepMessage, delivery: Delivery, reason: str) -> None:
        """Report ``msg``'s attempt lost, then ack its delivery."""
        context.bind_attempt(msg.run_id, msg.step_key, msg.attempt)
        await self._report_lost(msg, reason)
        await self._settle(delivery)

    async def _report_lost(self, msg: messages.StepMessage, reason: str) -> None:
        """Tell ``msg``'s coordinator that its attempt will not run (or finish) here: it
        dispatches a new one, unless the attempt is known to run on another live worker."""
        log.warning(
            "worker %s does not run step %s (attempt %d) of run %s: %s",
            self.name,
            msg.step_key,
            msg.attempt,
            msg.run_id,
            _LOST_REASONS[reason],
        )
        lost = messages.AttemptLost(
            msg.run_id, msg.step_key, msg.attempt, self.name, reason, self.instance
        )
        await self._send(msg, lost.encode(), "report")

    async def _send(self, msg: messages.StepMessage, body: bytes, what: str) -> None:
        """Publish ``body`` (a ``what`` about ``msg``'s attempt) to its coordinator.

        Retried with backoff while the broker fails, until it is sent (or the task is
        cancelled: a stopping worker's grace bounds the wait).  A reply queue that does not
        exist is given up at once: its coordinator is gone, and so is anyone who took its
        runs over, so nobody can use the message."""
        delay = 0.05
        while True:
            try:
                await self.transport.publish(msg.reply_to, body)
                return
            except UnroutableError:
                log.warning(
                    "worker %s dropped the %s of step %s (attempt %d) of run %s: its "
                    "coordinator's reply queue %s is gone",
                    self.name,
                    what,
                    msg.step_key,
                    msg.attempt,
                    msg.run_id,
                    msg.reply_to,
                )
                return
            except AexecError as exc:
                log.warning(
                    "worker %s: publishing the %s of step %s (attempt %d) of run %s failed, "
                    "retrying in %.2fs: %s",
                    self.name,
                    what,
                    msg.step_key,
                    msg.attempt,
                    msg.run_id,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.publish_retry_max)

    def _start_sending(self, coro: Coroutine[Any, Any, None]) -> None:
        background = self._background
        if background is None:
            coro.close()
            raise AexecError(f"worker {self.name} is not running")
        background.start_work(coro)

    # -- progress, heartbeats, control -----------------------------------------------------

    def _wake_output(self, now: bool) -> None:
        """Output arrived (from any thread): flush soon, or ``now``."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._flush_soon(now)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: a thread left behind
            loop.call_soon_threadsafe(self._flush_soon, now)

    def _flush_soon(self, now: bool) -> None:
        if now:
            self._flush_now.set()
        if self._flushing:
            return  # the flusher takes it on its next round
        background = self._background
        if background is None or not background.running:
            self._output.take()  # stopping: nobody sends it
            return
        try:
            background.start_work(self._flush_output())
        except AexecError:
            self._output.take()
            return
        self._flushing = True

    async def _flush_output(self) -> None:
        """Send what the steps reported, a flush interval after the first entry (or at once
        when asked), in one message per coordinator, until nothing is left; one flusher at
        a time, so that a slow broker makes the buffer drop (with markers), never grow.
        Best-effort: telemetry is not worth a retry."""
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.output.flush_interval):
                        await self._flush_now.wait()
                self._flush_now.clear()
                taken = self._output.take()
                if not taken:
                    return
                for reply_to, entries in taken.items():
                    body = encode_output(self.name, self.instance, entries)
                    if body is not None:
                        await self._publish_quietly(reply_to, body)
        finally:
            self._flushing = False

    async def _send_last_output(self, output: AttemptOutput) -> None:
        """Send what is left of an attempt's output, ahead of its completion (after which
        the coordinator may end the run and ignore it)."""
        reply_to, entries = output.finish()
        if entries:
            body = encode_output(self.name, self.instance, entries)
            if body is not None:
                await self._publish_quietly(reply_to, body)

    async def _publish_quietly(self, queue: str, body: bytes) -> bool:
        try:
            await self.transport.publish(queue, body)
            return True
        except UnroutableError:
            log.debug("worker %s: nobody reads %s any more", self.name, queue)
            return False
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
                self.step_names,
            )
            await self._publish_quietly(msg.reply_to, info.encode())
        elif msg.command == "terminate":
            log.warning("worker %s asked to terminate: draining", self.name)
            self.terminated.set()


_LOST_REASONS = {
    "redelivered": "the broker redelivered it, so it may have started elsewhere already",
    "crashed": "the child process running it died",
    "stopped": "the worker is stopping and its grace ran out",
}


def _fits(completion: messages.Completion) -> bool:
    """Surely encodes within a message's size limit (its texts at 4 bytes a character)."""
    texts = (
        len(completion.run_id)
        + len(completion.step_key)
        + len(completion.worker)
        + len(completion.instance)
    )
    return len(completion.output or b"") + 4 * texts + 128 <= DEFAULT_MAX_BODY


def _cancelling() -> bool:
    """True if the current task is being cancelled (by the worker), as opposed to a step
    that raised CancelledError of its own (a cancelled inner task, a library's timeout)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


__all__ = ["Worker", "WorkerConfig", "default_worker_name"]
