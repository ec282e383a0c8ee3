"""A process pool for CPU-bound sync steps (``aexec worker start --pool process``).

Nothing is pickled but strings and bytes: each child process loads the worker's modules
itself (by name or path) and finds steps by name; inputs and outputs cross as msgpack.
Inside a child, ``aexec.current()`` gives the run id, step key and attempt.

What a step in a child prints, logs, reports and emits is collected there, in an
:class:`~aexec.output.OutputBuffer` of its own with the worker's limits, and sent to the
worker through a pipe the pool shares (as encoded :class:`~aexec.messages.Output`
messages, a lock keeping children's messages whole): every flush interval while the step
writes (a timer thread, started only by output; at once, from the step's thread, when it
is half-way to its bound), and what is left when it ends, followed by a *done* frame.  A
thread of the worker reads the pipe and hands each attempt's entries to its output; the
worker waits for the done frame (briefly) before it completes the attempt, so the last
lines go ahead of the completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

import msgpack

from aexec import capture, codec, context, messages
from aexec.dsl import StepDef
from aexec.errors import CodecError, InputError, UnknownStepError
from aexec.log import FORMAT, StepContextFilter
from aexec.output import AttemptKey, AttemptOutput, OutputBuffer, OutputLimits, encode_output
from aexec.types import ErrorInfo

log = logging.getLogger(__name__)

# Per child process: the step table its initializer loaded.
_child_steps: dict[str, StepDef[Any, Any]] = {}

DONE_WAIT = 2.0
"""Seconds the worker waits for a finished attempt's last output from its child."""

_ENTRIES, _DONE, _STOP = b"E", b"D", b"S"


class _ChildOutput:
    """A child's side of the pipe: its output buffer, flushed by a timer thread."""

    def __init__(self, writer: Connection, lock: Any, limits: OutputLimits) -> None:
        self._writer = writer
        self._lock = lock  # a multiprocessing lock shared by the pool's children
        self._send_lock = threading.Lock()  # this child's timer and main thread
        self.buffer = OutputBuffer(limits, self._wake)
        self._interval = limits.flush_interval

    def _wake(self, now: bool) -> None:
        if now:  # the step's thread sends it (the worker's reader keeps the pipe moving)
            self.flush()
            return
        timer = threading.Timer(self._interval, self.flush)
        timer.daemon = True
        timer.start()

    def flush(self, done: AttemptOutput | None = None) -> None:
        with self._send_lock:
            frames = [
                _ENTRIES + body
                for entries in self.buffer.take().values()
                if (body := encode_output("", "", entries)) is not None
            ]
            if done is not None:
                _, entries = done.finish()
                body = encode_output("", "", entries) if entries else None
                if body is not None:
                    frames.append(_ENTRIES + body)
                frames.append(_DONE + msgpack.packb(list(done.key)))
            for frame in frames:
                with self._lock:
                    self._writer.send_bytes(frame)


_child_output: list[_ChildOutput] = []  # per child process: at most one


def _initialize(modules: Sequence[str], writer: Connection, lock: Any, limits: list[Any]) -> None:
    from aexec.loader import find_steps, load_module_or_file

    level, interval, pending, attempt_pending, attempt_total = limits
    _child_output.append(
        _ChildOutput(
            writer,
            lock,
            OutputLimits(level, interval, pending, attempt_pending, attempt_total),
        )
    )
    # The child's steps' records are captured; its own warnings go to stderr, as the
    # worker's would.
    stderr = logging.StreamHandler()
    stderr.setLevel(logging.WARNING)
    stderr.addFilter(StepContextFilter())
    stderr.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(stderr)
    root.setLevel(min(level, logging.WARNING))
    capture.install(level)
    _child_steps.update(find_steps([load_module_or_file(m) for m in modules]))


def _call(
    name: str,
    call: bytes,
    inputs: Sequence[bytes],
    run_id: str,
    key: str,
    attempt: int,
    max_size: int = codec.DEFAULT_MAX_BODY,
) -> tuple[bytes | None, list[Any] | None]:
    """Run step ``name`` in this child (inputs up to ``max_size`` bytes each); returns
    (encoded output, None) or (None, error).  Its output goes through the pipe, ending
    with a done frame."""
    child = _child_output[0] if _child_output else None
    output = None if child is None else child.buffer.open((run_id, key, attempt), "")
    try:
        return _run(name, call, inputs, run_id, key, attempt, max_size, output)
    finally:
        if child is not None and output is not None:
            child.flush(done=output)


def _run(
    name: str,
    call: bytes,
    inputs: Sequence[bytes],
    run_id: str,
    key: str,
    attempt: int,
    max_size: int,
    output: AttemptOutput | None,
) -> tuple[bytes | None, list[Any] | None]:
    step = _child_steps.get(name)
    if step is None or step.fn is None:
        unknown = UnknownStepError(f"process pool does not serve step {name!r}")
        return None, ErrorInfo.from_exception(unknown, retryable=False).to_wire()
    try:
        args, kwargs = codec.decode(
            call, inputs=[codec.decode(i, max_size=max_size) for i in inputs]
        )
    except Exception as exc:
        bad_input = InputError(f"cannot decode inputs: {exc}")
        return None, ErrorInfo.from_exception(bad_input, retryable=False).to_wire()
    sink: context.StepOutput = context.DISCARD if output is None else output
    ctx = context.StepContext(run_id, key, attempt, name, sink)
    try:
        result = context.run_with(ctx, step.fn, *args, **kwargs)
    except Exception as exc:
        return None, ErrorInfo.from_exception(exc).to_wire()
    try:
        return codec.encode(result), None
    except Exception as exc:
        unencodable = CodecError(f"step {key!r} returned a value that cannot be encoded: {exc}")
        return None, ErrorInfo.from_exception(unencodable, retryable=False).to_wire()


class ProcessPool:
    """Runs sync steps in ``size`` child processes that load ``modules``; inputs may be up to
    ``max_value_size`` bytes each; the steps' output is collected within ``limits``."""

    def __init__(
        self,
        modules: Sequence[str],
        size: int,
        *,
        max_value_size: int = codec.DEFAULT_MAX_BODY,
        limits: OutputLimits | None = None,
    ) -> None:
        self._max_value_size = max_value_size
        limits = limits or OutputLimits()
        mp = multiprocessing.get_context("spawn")
        self._reader, self._writer = mp.Pipe(duplex=False)
        self._outputs: dict[AttemptKey, tuple[AttemptOutput, asyncio.Future[None]]] = {}
        self._lock = mp.Lock()
        self._executor = ProcessPoolExecutor(
            max_workers=size,
            mp_context=mp,
            initializer=_initialize,
            initargs=(
                list(modules),
                self._writer,
                self._lock,
                [
                    limits.level,
                    limits.flush_interval,
                    limits.pending,
                    limits.attempt_pending,
                    limits.attempt_total,
                ],
            ),
        )
        self._thread = threading.Thread(
            target=self._read_output, name="aexec-pool-output", daemon=True
        )
        self._thread.start()

    async def run(
        self,
        name: str,
        call: bytes,
        inputs: Sequence[bytes],
        run_id: str,
        key: str,
        attempt: int,
        output: context.StepOutput = context.DISCARD,
    ) -> tuple[bytes | None, ErrorInfo | None]:
        loop = asyncio.get_running_loop()
        attempt_key = (run_id, key, attempt)
        done = loop.create_future()
        if isinstance(output, AttemptOutput):
            self._outputs[attempt_key] = (output, done)
        try:
            output_blob, error = await loop.run_in_executor(
                self._executor,
                _call,
                name,
                call,
                list(inputs),
                run_id,
                key,
                attempt,
                self._max_value_size,
            )
            if attempt_key in self._outputs:
                # The last lines go ahead of the completion (a bounded wait: telemetry).
                await asyncio.wait([done], timeout=DONE_WAIT)
        finally:
            self._outputs.pop(attempt_key, None)
        return output_blob, None if error is None else ErrorInfo.from_wire(error)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        # A child may still be starting, and needs the pipe and the lock it was given (they
        # go when this pool goes): a thread keeps them until the children are gone.
        threading.Thread(target=self._close, name="aexec-pool-close", daemon=True).start()

    def _close(self) -> None:
        self._executor.shutdown(wait=True)
        with contextlib.suppress(OSError):  # one byte: written whole beside the children's
            self._writer.send_bytes(_STOP)

    def _read_output(self) -> None:
        """The pool's reader thread: hands the children's output to its attempts."""
        while True:
            try:
                frame = self._reader.recv_bytes()
            except (EOFError, OSError):
                return
            tag, body = frame[:1], frame[1:]
            try:
                if tag == _STOP:
                    return
                if tag == _ENTRIES:
                    self._entries(body)
                elif tag == _DONE:
                    self._done(body)
            except Exception as exc:  # a bad frame costs its output, never the worker
                log.warning("process pool: dropped output from a child: %s", exc)

    def _entries(self, body: bytes) -> None:
        message = messages.decode(body)
        if not isinstance(message, messages.Output):
            return
        by_attempt: dict[AttemptKey, list[list[Any]]] = {}
        for entry in message.entries:
            by_attempt.setdefault((entry[0], entry[1], entry[2]), []).append(entry)
        for attempt_key, entries in by_attempt.items():
            found = self._outputs.get(attempt_key)
            if found is not None:
                found[0].extend(entries)

    def _done(self, body: bytes) -> None:
        run_id, key, attempt = msgpack.unpackb(body)
        found = self._outputs.get((run_id, key, attempt))
        if found is not None:
            done = found[1]
            done.get_loop().call_soon_threadsafe(_resolve, done)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
