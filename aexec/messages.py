"""Wire messages between coordinator and workers: small msgpack arrays, strictly validated.

A step message never carries the rest of the DAG: only what one attempt of one step needs.
Every message is ``[version, kind, ...]``; :func:`decode` rejects anything malformed with a
:class:`~aexec.errors.CodecError` naming the problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from aexec.errors import CodecError
from aexec.types import ErrorInfo

VERSION = 1
MAX_BODY = 64 * 1024 * 1024

STEP = "step"
DONE = "done"
PROGRESS = "progress"
HEARTBEAT = "heartbeat"
CONTROL = "control"
WORKER_INFO = "worker_info"
SUBMIT = "submit"
EVENTS = "events"


@dataclass(slots=True)
class StepMessage:
    """Run ``attempt`` of step ``step_key`` (code name ``name``) of run ``run_id``.

    ``call`` is the step's encoded ``[args, kwargs]`` template; ``inputs`` are the encoded
    upstream outputs it refers to by slot (an encoded ``ObjectRef`` for large ones).
    """

    run_id: str
    step_key: str
    attempt: int
    name: str
    call: bytes
    inputs: Sequence[bytes]
    timeout: float | None
    reply_to: str

    def encode(self) -> bytes:
        return msgpack.packb(  # type: ignore[no-any-return]
            [
                VERSION,
                STEP,
                self.run_id,
                self.step_key,
                self.attempt,
                self.name,
                self.call,
                self.inputs,
                self.timeout,
                self.reply_to,
            ],
            use_bin_type=True,
        )


@dataclass(slots=True)
class Completion:
    """An attempt finished: ``output`` (encoded) when ``error`` is None."""

    run_id: str
    step_key: str
    attempt: int
    output: bytes | None
    error: ErrorInfo | None
    worker: str
    started_at: float
    finished_at: float

    def encode(self) -> bytes:
        return msgpack.packb(  # type: ignore[no-any-return]
            [
                VERSION,
                DONE,
                self.run_id,
                self.step_key,
                self.attempt,
                self.output,
                None if self.error is None else self.error.to_wire(),
                self.worker,
                self.started_at,
                self.finished_at,
            ],
            use_bin_type=True,
        )


@dataclass(slots=True)
class Progress:
    """A step started, or reported progress (``fraction`` in [0, 1] and/or ``message``)."""

    run_id: str
    step_key: str
    attempt: int
    worker: str
    ts: float
    fraction: float | None = None
    message: str | None = None

    def encode(self) -> bytes:
        return msgpack.packb(  # type: ignore[no-any-return]
            [
                VERSION,
                PROGRESS,
                self.run_id,
                self.step_key,
                self.attempt,
                self.worker,
                self.ts,
                self.fraction,
                self.message,
            ],
            use_bin_type=True,
        )


@dataclass(slots=True)
class Heartbeat:
    """A worker is alive and running these ``(run_id, step_key, attempt)`` attempts."""

    worker: str
    ts: float
    running: list[tuple[str, str, int]]

    def encode(self) -> bytes:
        return msgpack.packb(  # type: ignore[no-any-return]
            [VERSION, HEARTBEAT, self.worker, self.ts, [list(r) for r in self.running]],
            use_bin_type=True,
        )


@dataclass(slots=True)
class Control:
    """A command broadcast to workers or coordinators.

    ``ping`` (answer with WorkerInfo on ``reply_to``), ``terminate`` (drain and exit), or
    ``cancel`` (stop the in-flight attempts of run ``run_id``).  ``target`` is a worker
    name, or None for every one.
    """

    command: str
    target: str | None = None
    reply_to: str | None = None
    run_id: str | None = None

    def encode(self) -> bytes:
        return msgpack.packb(  # type: ignore[no-any-return]
            [VERSION, CONTROL, self.command, self.target, self.reply_to, self.run_id],
            use_bin_type=True,
        )


@dataclass(slots=True)
class WorkerInfo:
    """A worker's answer to ``ping``; durations in seconds."""

    name: str
    host: str
    pid: int
    queues: list[str]
    in_flight: int
    heartbeat_age: float
    started_at: float

    def encode(self) -> bytes:
        return msgpack.packb(  # type: ignore[no-any-return]
            [
                VERSION,
                WORKER_INFO,
                self.name,
                self.host,
                self.pid,
                self.queues,
                self.in_flight,
                self.heartbeat_age,
                self.started_at,
            ],
            use_bin_type=True,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "pid": self.pid,
            "queues": self.queues,
            "in_flight": self.in_flight,
            "heartbeat_age": self.heartbeat_age,
            "started_at": self.started_at,
        }


@dataclass(slots=True)
class Submit:
    """A library client asks a coordinator service to run ``plan`` (its encoded bytes).

    Events of the run are sent to ``notify`` (the client's queue) as they are recorded.
    """

    run_id: str
    plan: bytes
    priority: int
    notify: str | None

    def encode(self) -> bytes:
        return msgpack.packb(  # type: ignore[no-any-return]
            [VERSION, SUBMIT, self.run_id, self.plan, self.priority, self.notify],
            use_bin_type=True,
        )


@dataclass(slots=True)
class Events:
    """Recorded events of one run, for the client that submitted it.

    Each record is ``[seq, ts, kind, step, attempt, data, output]``.
    """

    run_id: str
    records: list[list[Any]]

    def encode(self) -> bytes:
        return msgpack.packb(  # type: ignore[no-any-return]
            [VERSION, EVENTS, self.run_id, self.records], use_bin_type=True
        )


Message = StepMessage | Completion | Progress | Heartbeat | Control | WorkerInfo | Submit | Events


def _reject_ext(code: int, data: bytes) -> Any:
    raise CodecError(f"unexpected msgpack extension type {code} in a message envelope")


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise CodecError(f"malformed message: {what} must be a string")
    return v


def _int(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise CodecError(f"malformed message: {what} must be a non-negative integer")
    return v


def _num(v: Any, what: str) -> float:
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise CodecError(f"malformed message: {what} must be a number")
    return float(v)


def decode(body: bytes) -> Message:
    """Decode and validate one message; :class:`CodecError` for anything malformed."""
    if len(body) > MAX_BODY:
        raise CodecError(f"message of {len(body)} bytes exceeds the {MAX_BODY}-byte limit")
    try:
        m = msgpack.unpackb(body, raw=False, ext_hook=_reject_ext, strict_map_key=True)
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"cannot decode message: {type(exc).__name__}: {exc}") from exc
    if not isinstance(m, list) or len(m) < 2:
        raise CodecError("malformed message: not an aexec message")
    if m[0] != VERSION:
        raise CodecError(f"unsupported message version {m[0]!r}")
    kind = m[1]
    if kind == STEP and len(m) == 10:
        _, _, run_id, key, attempt, name, call, inputs, timeout, reply_to = m
        if not isinstance(call, bytes):
            raise CodecError("malformed message: call must be bytes")
        if not isinstance(inputs, list) or not all(isinstance(i, bytes) for i in inputs):
            raise CodecError("malformed message: inputs must be a list of bytes")
        return StepMessage(
            _str(run_id, "run id"),
            _str(key, "step key"),
            _int(attempt, "attempt"),
            _str(name, "step name"),
            call,
            inputs,
            None if timeout is None else _num(timeout, "timeout"),
            _str(reply_to, "reply_to"),
        )
    if kind == DONE and len(m) == 10:
        _, _, run_id, key, attempt, output, error, worker, started, finished = m
        if output is not None and not isinstance(output, bytes):
            raise CodecError("malformed message: output must be bytes")
        if (output is None) == (error is None):
            raise CodecError("malformed message: a completion has exactly one of output, error")
        return Completion(
            _str(run_id, "run id"),
            _str(key, "step key"),
            _int(attempt, "attempt"),
            output,
            None if error is None else ErrorInfo.from_wire(error),
            _str(worker, "worker"),
            _num(started, "started_at"),
            _num(finished, "finished_at"),
        )
    if kind == PROGRESS and len(m) == 9:
        _, _, run_id, key, attempt, worker, ts, fraction, message = m
        if message is not None and not isinstance(message, str):
            raise CodecError("malformed message: progress message must be a string")
        return Progress(
            _str(run_id, "run id"),
            _str(key, "step key"),
            _int(attempt, "attempt"),
            _str(worker, "worker"),
            _num(ts, "ts"),
            None if fraction is None else _num(fraction, "fraction"),
            message,
        )
    if kind == HEARTBEAT and len(m) == 5:
        _, _, worker, ts, running = m
        if not isinstance(running, list) or not all(
            isinstance(r, list)
            and len(r) == 3
            and isinstance(r[0], str)
            and isinstance(r[1], str)
            and isinstance(r[2], int)
            and not isinstance(r[2], bool)
            and r[2] >= 0
            for r in running
        ):
            raise CodecError("malformed message: heartbeat running list")
        return Heartbeat(
            _str(worker, "worker"), _num(ts, "ts"), [(r[0], r[1], r[2]) for r in running]
        )
    if kind == CONTROL and len(m) == 6:
        _, _, command, target, reply_to, run_id = m
        if command not in ("ping", "terminate", "cancel"):
            raise CodecError(f"malformed message: unknown control command {command!r}")
        return Control(
            command,
            None if target is None else _str(target, "target"),
            None if reply_to is None else _str(reply_to, "reply_to"),
            None if run_id is None else _str(run_id, "run id"),
        )
    if kind == SUBMIT and len(m) == 6:
        _, _, run_id, plan, priority, notify = m
        if not isinstance(plan, bytes):
            raise CodecError("malformed message: plan must be bytes")
        return Submit(
            _str(run_id, "run id"),
            plan,
            _int(priority, "priority"),
            None if notify is None else _str(notify, "notify"),
        )
    if kind == EVENTS and len(m) == 4:
        _, _, run_id, events = m
        if not isinstance(events, list) or not all(
            isinstance(e, list) and len(e) == 7 for e in events
        ):
            raise CodecError("malformed message: events must be a list of event records")
        return Events(_str(run_id, "run id"), events)
    if kind == WORKER_INFO and len(m) == 9:
        _, _, name, host, pid, queues, in_flight, age, started = m
        if not isinstance(queues, list) or not all(isinstance(q, str) for q in queues):
            raise CodecError("malformed message: worker queues must be a list of strings")
        return WorkerInfo(
            _str(name, "name"),
            _str(host, "host"),
            _int(pid, "pid"),
            queues,
            _int(in_flight, "in_flight"),
            _num(age, "heartbeat_age"),
            _num(started, "started_at"),
        )
    raise CodecError(f"malformed message: unknown kind {kind!r} or wrong length {len(m)}")
