"""Running one attempt's code on a worker: its inputs in, the step called, its output out.

:class:`StepRunner` loads a step message's inputs (inline, or from the object store), calls
the step — an async step on the worker's loop, a sync step in a bounded thread pool (created
on first use) or in a process pool (``--pool process``) — and encodes its return value,
storing a large one in the object store.  Whatever the step raises is the caller's to
report; the runner's own failures are typed:

* :class:`StepFailure`: the plumbing failed (undecodable inputs, an unencodable output, an
  object store error), carried as an :class:`~aexec.types.ErrorInfo`;
* :class:`LostAttempt`: the attempt cannot finish here because the child process running
  it died; that child is replaced, and the steps in the pool's other children go on.

A cancelled attempt (its run cancelled, its timeout fired, the worker stopping past its
grace) is cancelled in its step context too, so that a sync step, which goes on in its
thread, sees ``aexec.current().cancelled``; in the process pool, a step that has not
returned ``cancel_grace`` seconds later is killed with its child process.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aexec import cache, codec, context, directives, messages
from aexec.dsl import StepDef
from aexec.errors import (
    CodecError,
    InputError,
    ObjectStoreError,
    StepTimeoutError,
    ValueTooLargeError,
)
from aexec.objects import ObjectStore, output_key, resolve_refs
from aexec.output import OutputLimits
from aexec.pool import DEFAULT_CANCEL_GRACE, ChildDied, ProcessPool
from aexec.types import ErrorInfo

log = logging.getLogger(__name__)


class StepFailure(Exception):
    """A failure of the step's plumbing (inputs, output), carried as an ErrorInfo."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


class LostAttempt(Exception):
    """The attempt cannot finish here (``reason``: ``crashed``, its child process died)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StepRunner:
    """Runs attempts for one worker.  ``pool`` is ``"thread"`` or ``"process"`` (sync steps
    in ``processes`` children that load ``modules``); ``threads`` bounds the thread pool;
    outputs longer than ``inline_threshold`` bytes go to ``objects``; inputs and outputs
    over ``max_value_size`` bytes are refused; ``limits`` bound what steps in child
    processes report; a cancelled step in a child process is killed after
    ``cancel_grace`` seconds."""

    def __init__(
        self,
        objects: ObjectStore,
        *,
        pool: str,
        threads: int,
        processes: int,
        modules: Sequence[str],
        inline_threshold: int,
        max_value_size: int,
        limits: OutputLimits | None = None,
        cancel_grace: float = DEFAULT_CANCEL_GRACE,
    ) -> None:
        self._objects = objects
        self._cancel_grace = cancel_grace
        self._pool = pool
        self._thread_count = threads
        self._process_count = processes
        self._modules = tuple(modules)
        self._inline_threshold = inline_threshold
        self._max_value_size = max_value_size
        self._limits = limits
        self._threads: ThreadPoolExecutor | None = None
        self._processes: ProcessPool | None = None

    async def run(
        self, msg: messages.StepMessage, step: StepDef[Any, Any], output: context.StepOutput
    ) -> bytes:
        """The encoded output of ``msg``'s attempt of ``step`` (an encoded ``ObjectRef`` for
        a large one); raises what the step raises, :class:`StepFailure` or
        :class:`LostAttempt`.  ``output`` receives what the step reports (progress, log
        records, what it prints, custom events)."""
        limit = self._max_value_size
        try:
            inputs = []
            for blob in msg.inputs:  # as load_value, without a coroutine for an inline one
                value, has_refs = codec.decode_with_refs(blob, max_size=limit)
                if has_refs:
                    value = await resolve_refs(self._objects, value, max_size=limit)
                inputs.append(value)
        except (CodecError, ValueError, TypeError) as exc:
            raise StepFailure(
                ErrorInfo.from_exception(
                    InputError(f"cannot decode inputs: {exc}"), retryable=False
                )
            ) from None
        except ObjectStoreError as exc:
            raise StepFailure(
                ErrorInfo(type(exc).__name__, f"cannot load an input: {exc}")
            ) from None
        entry = self._cache_entry(msg, step, inputs) if step.cache else None
        cached = None if entry is None else await cache.lookup(self._objects, entry)
        if cached is not None:
            encoded = cached
        elif self._pool == "process" and not step.is_async:
            encoded = await self._run_in_process(msg, step.name, inputs, output)
        else:
            encoded = await self._run_here(msg, step, inputs, output)
        if (
            entry is not None
            and cached is None
            and len(encoded) <= limit
            and codec.directive_of(encoded) is None  # a skip is not an output to reuse
        ):
            await cache.store(self._objects, entry, encoded, step.cache_ttl)
        if len(encoded) > limit:
            raise StepFailure(
                ErrorInfo.from_exception(
                    ValueTooLargeError(
                        f"step {msg.step_key!r} returned {len(encoded)} bytes, over the "
                        f"{limit}-byte limit on values (AEXEC_MAX_VALUE_SIZE)"
                    ),
                    retryable=False,
                )
            )
        if len(encoded) > self._inline_threshold:
            object_key = output_key(msg.run_id, msg.step_key, msg.attempt)
            try:
                await self._objects.put(object_key, encoded)
            except ObjectStoreError as exc:
                raise StepFailure(
                    ErrorInfo(type(exc).__name__, f"cannot store output: {exc}")
                ) from None
            encoded = codec.encode(codec.ObjectRef(object_key))
        if cached is not None:
            return codec.encode(directives.Cached(encoded))
        return encoded

    def _cache_entry(
        self, msg: messages.StepMessage, step: StepDef[Any, Any], inputs: list[Any]
    ) -> str | None:
        """The cache entry of this attempt; None when a key function fails (the step runs,
        uncached)."""
        custom = None
        if callable(step.cache):
            try:
                args, kwargs = codec.decode(msg.call, inputs=inputs)
                custom = step.cache(*args, **kwargs)
                codec.check_encodable(custom)
            except Exception as exc:
                log.warning("step %s: its cache key function failed: %r", msg.step_key, exc)
                return None
        return cache.key(msg.name, step.version or "", msg.call, inputs, custom)

    def close(self) -> None:
        """Let go of the pools (a sync step still running in a thread goes on, detached)."""
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None
        if self._processes is not None:
            self._processes.shutdown()
            self._processes = None

    async def _run_here(
        self,
        msg: messages.StepMessage,
        step: StepDef[Any, Any],
        inputs: list[Any],
        output: context.StepOutput,
    ) -> bytes:
        try:
            args, kwargs = codec.decode(msg.call, inputs=inputs)
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise CodecError("call template is not [args, kwargs]")
        except (CodecError, ValueError, TypeError) as exc:
            raise StepFailure(
                ErrorInfo.from_exception(
                    InputError(f"cannot decode the call: {exc}"), retryable=False
                )
            ) from None
        ctx = context.StepContext(msg.run_id, msg.step_key, msg.attempt, step.name, output)
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
                # The thread runs in a copy of this task's context (as asyncio.to_thread
                # does): a span current here is current in the step too.
                future = asyncio.get_running_loop().run_in_executor(
                    self._thread_pool(),
                    functools.partial(
                        contextvars.copy_context().run, context.run_with, ctx, fn, *args, **kwargs
                    ),
                )
                result = await _within(future, msg.timeout)
        except TimeoutError:
            ctx.cancel()
            raise StepTimeoutError(
                f"step {msg.step_key!r} timed out after {msg.timeout:g} s"
            ) from None
        except asyncio.CancelledError:
            # A sync step goes on in its thread: it sees the cancellation through
            # aexec.current().cancelled (run cancelled, worker stopping past its grace).
            ctx.cancel()
            raise
        try:
            return codec.encode(result)
        except CodecError as exc:
            raise StepFailure(
                ErrorInfo(
                    "CodecError",
                    f"step {msg.step_key!r} returned a value that cannot be encoded: {exc}",
                    retryable=False,
                )
            ) from None

    async def _run_in_process(
        self,
        msg: messages.StepMessage,
        name: str,
        inputs: list[Any],
        output: context.StepOutput,
    ) -> bytes:
        """Run step ``name`` (its code's name: ``msg.name`` may carry a version)."""
        processes = self._processes
        if processes is None:
            processes = self._processes = ProcessPool(
                self._modules,
                self._process_count,
                max_value_size=self._max_value_size,
                limits=self._limits,
                cancel_grace=self._cancel_grace,
            )
        blobs = [codec.encode(value) for value in inputs]
        try:
            output, error = await _within(
                processes.run(name, msg.call, blobs, msg.run_id, msg.step_key, msg.attempt, output),
                msg.timeout,
            )
        except TimeoutError:
            raise StepTimeoutError(
                f"step {msg.step_key!r} timed out after {msg.timeout:g} s"
            ) from None
        except ChildDied as exc:
            # OOM, a signal, a crash in native code: this attempt is lost (a new one runs,
            # up to the coordinator's bound on lost attempts); the child is replaced.
            log.warning("step %s (attempt %d): %s", msg.step_key, msg.attempt, exc)
            raise LostAttempt("crashed") from None
        if error is not None:
            raise StepFailure(error)
        if not isinstance(output, bytes):
            raise StepFailure(ErrorInfo("InternalError", "process pool returned no output"))
        return output

    def _thread_pool(self) -> ThreadPoolExecutor:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(
                max_workers=self._thread_count, thread_name_prefix="aexec-step"
            )
        return self._threads


async def _within(awaitable: Awaitable[Any], seconds: float | None) -> Any:
    if seconds is None:
        return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


__all__ = ["LostAttempt", "StepFailure", "StepRunner"]
