"""A process pool for CPU-bound sync steps (``aexec worker start --pool process``).

Nothing is pickled but strings and bytes: each child process loads the worker's modules
itself (by name or path) and finds steps by name; inputs and outputs cross as msgpack.
Inside a child, ``aexec.current()`` gives the run id, step key and attempt.

Each child runs one attempt at a time and has a pipe of its own to the worker, so that
what happens to one child never touches another:

* the worker sends a *run* frame, and a *cancel* frame when the attempt is cancelled (its
  run cancelled, its timeout fired, the worker stopping past its grace); a thread of the
  child reads them, so that the step sees ``aexec.current().cancelled`` while it runs;
* the child sends what the step prints, logs, reports and emits (collected in an
  :class:`~aexec.output.OutputBuffer` of its own with the worker's limits, as encoded
  :class:`~aexec.messages.Output` messages, every flush interval while it writes, at once
  when it is half-way to its bound), then the attempt's *result*: the last lines go ahead
  of the completion, in order, on the one pipe;
* a thread of the worker per child reads its pipe and hands the entries and the result
  to the attempt.

A cancelled step that has not returned ``cancel_grace`` seconds later is killed (SIGKILL)
and its child replaced, so the pool keeps its size; a step that stops by itself leaves its
child to serve the next one.  A child that dies on its own (a crash in native code, the
OOM killer, ``os._exit``) fails only the attempt it ran, with :class:`ChildDied`, and is
replaced too.  A child whose worker is gone (its pipe closed) exits.  Children are not
daemons, so that a step may start processes of its own; a pool dropped without
:meth:`ProcessPool.shutdown` (or its process exiting) kills them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.util
import os
import queue
import signal
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import msgpack

from aexec import capture, codec, context, messages
from aexec.dsl import StepDef
from aexec.errors import AexecError, CodecError, InputError, UnknownStepError
from aexec.log import FORMAT, StepContextFilter
from aexec.output import AttemptKey, AttemptOutput, OutputBuffer, OutputLimits, encode_output
from aexec.types import ErrorInfo

log = logging.getLogger(__name__)

DEFAULT_CANCEL_GRACE = 5.0
"""Seconds a cancelled step in a child process has to return before the child is killed."""

# Frames: worker → child
_RUN, _CANCEL, _STOP = b"R", b"C", b"S"
# Frames: child → worker
_ENTRIES, _RESULT = b"E", b"T"


class ChildDied(AexecError):
    """The child process running an attempt died before it answered (``exitcode``: its
    exit status, negative for a signal)."""

    def __init__(self, pid: int | None, exitcode: int | None) -> None:
        how = f"exit status {exitcode}"
        if exitcode is not None and exitcode < 0:
            with contextlib.suppress(ValueError):
                how = f"killed by {signal.Signals(-exitcode).name}"
        super().__init__(f"child process {pid} died ({how})")
        self.exitcode = exitcode


# -- the child's side ------------------------------------------------------------------------


class _ChildLink:
    """A child's end of its pipe: the step's output, flushed by a timer thread, the
    result, and the cancellation of the attempt that runs."""

    def __init__(self, conn: Connection, limits: OutputLimits) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()  # the step's thread, timers, the main loop
        self.buffer = OutputBuffer(limits, self._wake)
        self._interval = limits.flush_interval
        self._state_lock = threading.Lock()
        self._running: context.StepContext | None = None
        self._cancelled: AttemptKey | None = None

    def _wake(self, now: bool) -> None:
        if now:  # the step's thread sends it (the worker's reader keeps the pipe moving)
            self.flush()
            return
        timer = threading.Timer(self._interval, self.flush)
        timer.daemon = True
        timer.start()

    def flush(self, last: AttemptOutput | None = None) -> None:
        """Send what the steps reported (and what is left of ``last``, which ended)."""
        with self._send_lock:
            frames = [
                _ENTRIES + body
                for entries in self.buffer.take().values()
                if (body := encode_output("", "", entries)) is not None
            ]
            if last is not None:
                _, entries = last.finish()
                body = encode_output("", "", entries) if entries else None
                if body is not None:
                    frames.append(_ENTRIES + body)
            for frame in frames:
                self._conn.send_bytes(frame)

    def send_result(self, result: tuple[bytes | None, list[Any] | None]) -> None:
        with self._send_lock:
            self._conn.send_bytes(_RESULT + msgpack.packb(list(result)))

    def started(self, ctx: context.StepContext) -> None:
        with self._state_lock:
            self._running = ctx
            if self._cancelled == (ctx.run_id, ctx.step_key, ctx.attempt):
                ctx.cancel()

    def ended(self) -> None:
        with self._state_lock:
            self._running = None
            self._cancelled = None

    def cancel(self, key: AttemptKey) -> None:
        """Attempt ``key`` is cancelled (it may not have started yet)."""
        with self._state_lock:
            self._cancelled = key
            ctx = self._running
            if ctx is not None and (ctx.run_id, ctx.step_key, ctx.attempt) == key:
                ctx.cancel()


def _child_main(conn: Connection, modules: Sequence[str], limits: list[Any]) -> None:
    """A child process: load ``modules``, then run the attempts the worker sends."""
    from aexec.loader import find_steps, load_module_or_file

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the worker, which stops us
    level, interval, pending, attempt_pending, attempt_total = limits
    link = _ChildLink(conn, OutputLimits(level, interval, pending, attempt_pending, attempt_total))
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
    steps = find_steps([load_module_or_file(m) for m in modules])
    requests: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()
    threading.Thread(
        target=_child_listen, args=(conn, link, requests), name="aexec-pool-listen", daemon=True
    ).start()
    while True:
        name, call, inputs, run_id, key, attempt, max_size = requests.get()
        output = link.buffer.open((run_id, key, attempt), "")
        try:
            result = _run(steps, link, name, call, inputs, run_id, key, attempt, max_size, output)
        finally:
            link.ended()
            link.flush(last=output)
        link.send_result(result)


def _child_listen(
    conn: Connection, link: _ChildLink, requests: queue.SimpleQueue[list[Any]]
) -> None:
    """The child's reader: attempts to run, cancels; its worker gone, the child exits."""
    while True:
        try:
            frame = conn.recv_bytes()
        except (EOFError, OSError):
            os._exit(0)
        tag, body = frame[:1], frame[1:]
        if tag == _RUN:
            requests.put(msgpack.unpackb(body))
        elif tag == _CANCEL:
            run_id, key, attempt = msgpack.unpackb(body)
            link.cancel((run_id, key, attempt))
        elif tag == _STOP:
            os._exit(0)


def _run(
    steps: dict[str, StepDef[Any, Any]],
    link: _ChildLink,
    name: str,
    call: bytes,
    inputs: Sequence[bytes],
    run_id: str,
    key: str,
    attempt: int,
    max_size: int,
    output: AttemptOutput,
) -> tuple[bytes | None, list[Any] | None]:
    """Run step ``name`` here (inputs up to ``max_size`` bytes each); returns (encoded
    output, None) or (None, error)."""
    step = steps.get(name)
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
    ctx = context.StepContext(run_id, key, attempt, name, output)
    link.started(ctx)
    try:
        result = context.run_with(ctx, step.fn, *args, **kwargs)
    except Exception as exc:
        return None, ErrorInfo.from_exception(exc).to_wire()
    try:
        return codec.encode(result), None
    except Exception as exc:
        unencodable = CodecError(f"step {key!r} returned a value that cannot be encoded: {exc}")
        return None, ErrorInfo.from_exception(unencodable, retryable=False).to_wire()


# -- the worker's side -----------------------------------------------------------------------


class _Child:
    """One child process, seen from the worker's loop: its pipe, the attempt it runs and
    the thread that reads what it sends."""

    def __init__(
        self, mp: Any, modules: Sequence[str], limits: list[Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._loop = loop
        self.conn, theirs = mp.Pipe(duplex=True)
        self.process = mp.Process(
            target=_child_main,
            args=(theirs, list(modules), limits),
            name="aexec-pool-child",
            daemon=False,  # its step may start processes of its own (a daemon may not)
        )
        self.process.start()
        theirs.close()  # ours closes when the child dies: the reader sees the end
        self.pid: int | None = self.process.pid
        self.alive = True
        self.output: AttemptOutput | None = None
        self.reply: asyncio.Future[bytes] | None = None
        self._reader = threading.Thread(
            target=self._read, name=f"aexec-pool-read-{self.pid}", daemon=True
        )
        self._reader.start()

    def start(self, request: list[Any], output: context.StepOutput) -> asyncio.Future[bytes]:
        """Send it an attempt: the future resolves to the result frame's body, or fails
        with :class:`ChildDied`."""
        self.output = output if isinstance(output, AttemptOutput) else None
        reply = self.reply = self._loop.create_future()
        self._send(_RUN + msgpack.packb(request))
        return reply

    def finished(self) -> None:
        self.output = None
        self.reply = None

    def cancel(self, key: AttemptKey) -> None:
        self._send(_CANCEL + msgpack.packb(list(key)))

    def stop(self) -> None:
        """Ask it to exit (it does at once, whatever it runs)."""
        self._send(_STOP)

    def kill(self) -> None:
        self.alive = False
        with contextlib.suppress(OSError, ValueError):  # gone already
            self.process.kill()

    def _send(self, frame: bytes) -> None:
        try:
            self.conn.send_bytes(frame)
        except (OSError, ValueError):  # it died: the reader reports it
            self.alive = False

    def _read(self) -> None:
        """The reader thread: entries go to the attempt's output, the result and the
        child's death to the loop."""
        while True:
            try:
                frame = self.conn.recv_bytes()
            except (EOFError, OSError):
                break
            tag, body = frame[:1], frame[1:]
            try:
                if tag == _ENTRIES:
                    self._entries(body)
                elif tag == _RESULT:
                    self._post(self._resolve, body)
            except Exception as exc:  # a bad frame costs its output, never the worker
                log.warning("process pool: dropped output from child %s: %s", self.pid, exc)
        self.process.join(timeout=5.0)
        self._post(self._died, self.process.exitcode)
        self.conn.close()

    def _entries(self, body: bytes) -> None:
        output = self.output
        message = messages.decode(body)
        if output is None or not isinstance(message, messages.Output):
            return
        key = output.key
        output.extend([e for e in message.entries if (e[0], e[1], e[2]) == key])

    def _post(self, callback: Any, arg: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
            self._loop.call_soon_threadsafe(callback, arg)

    def _resolve(self, body: bytes) -> None:
        reply = self.reply
        if reply is not None and not reply.done():
            reply.set_result(body)

    def _died(self, exitcode: int | None) -> None:
        self.alive = False
        reply = self.reply
        if reply is not None and not reply.done():
            reply.set_exception(ChildDied(self.pid, exitcode))


class ProcessPool:
    """Runs sync steps in at most ``size`` child processes that load ``modules``; inputs
    may be up to ``max_value_size`` bytes each; the steps' output is collected within
    ``limits``; a cancelled step has ``cancel_grace`` seconds to return before its child
    is killed.  Used from one event loop."""

    def __init__(
        self,
        modules: Sequence[str],
        size: int,
        *,
        max_value_size: int = codec.DEFAULT_MAX_BODY,
        limits: OutputLimits | None = None,
        cancel_grace: float = DEFAULT_CANCEL_GRACE,
    ) -> None:
        self._modules = tuple(modules)
        self._size = size
        self._max_value_size = max_value_size
        self._cancel_grace = cancel_grace
        limits = limits or OutputLimits()
        self._limits = [
            limits.level,
            limits.flush_interval,
            limits.pending,
            limits.attempt_pending,
            limits.attempt_total,
        ]
        self._mp = multiprocessing.get_context("spawn")
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Child] = []
        self._children: set[_Child] = set()
        self._closed = False
        # Children are not daemons: if the pool is dropped or the process exits without a
        # shutdown, they are killed (before multiprocessing joins them at exit).
        multiprocessing.util.Finalize(self, _kill_all, args=(self._children,), exitpriority=10)

    @property
    def pids(self) -> list[int]:
        """The process ids of its live children."""
        return sorted(c.pid for c in self._children if c.alive and c.pid is not None)

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
        """Run one attempt of step ``name`` in a child: (encoded output, None) or (None,
        error); raises :class:`ChildDied` if its child dies.  Cancelled, it cancels the
        step and waits for it for the grace, then kills the child."""
        await self._slots.acquire()
        try:
            child = self._take()
            request = [name, call, list(inputs), run_id, key, attempt, self._max_value_size]
            reply = child.start(request, output)
            try:
                try:
                    await asyncio.wait([reply])
                except asyncio.CancelledError:
                    await self._stop_attempt(child, reply, (run_id, key, attempt))
                    raise
            finally:
                child.finished()
                self._give_back(child)
        finally:
            self._slots.release()
        output_blob, error = msgpack.unpackb(reply.result())  # or ChildDied
        return output_blob, None if error is None else ErrorInfo.from_wire(error)

    async def _stop_attempt(
        self, child: _Child, reply: asyncio.Future[bytes], key: AttemptKey
    ) -> None:
        """Cancel the step ``child`` runs; kill the child if it has not returned within
        the grace (or at once, if this is cancelled again)."""
        child.cancel(key)
        try:
            done, _ = await asyncio.wait([reply], timeout=self._cancel_grace)
        except asyncio.CancelledError:
            child.kill()
            raise
        if done:
            reply.exception()  # it returned, or its child died meanwhile: nobody needs it
        else:
            log.warning(
                "step %s (attempt %d) of run %s did not stop within %g s of its "
                "cancellation: killing its child process %s",
                key[1],
                key[2],
                key[0],
                self._cancel_grace,
                child.pid,
            )
            child.kill()

    def _take(self) -> _Child:
        while self._idle:
            child = self._idle.pop()
            if child.alive:
                return child
            self._children.discard(child)
        return self._spawn()

    def _spawn(self) -> _Child:
        if self._closed:
            raise AexecError("the process pool is shut down")
        child = _Child(self._mp, self._modules, self._limits, asyncio.get_running_loop())
        self._children.add(child)
        return child

    def _give_back(self, child: _Child) -> None:
        """An attempt ended: its child serves the next, or is replaced if it died."""
        if self._closed:
            child.stop()
            return
        if child.alive:
            self._idle.append(child)
            return
        self._children.discard(child)
        log.warning("process pool: child %s is gone: starting a new one", child.pid)
        with contextlib.suppress(AexecError, OSError):  # else the next attempt starts one
            self._idle.append(self._spawn())

    def shutdown(self) -> None:
        """Stop every child (those still running a step are killed)."""
        self._closed = True
        idle = set(self._idle)
        self._idle.clear()
        for child in list(self._children):
            if child in idle:
                child.stop()
            else:
                child.kill()
        self._children.clear()


def _kill_all(children: set[_Child]) -> None:
    for child in list(children):
        child.kill()


__all__ = ["DEFAULT_CANCEL_GRACE", "ChildDied", "ProcessPool"]
