"""Wire messages between coordinator and workers: small msgpack arrays, strictly validated.

A step message never carries the rest of the DAG: only what one attempt of one step needs.
Every message is ``[VERSION, KIND, *fields]``.  Each message class owns its encoding: its
``KIND``, ``to_wire`` (its fields in wire order) and ``from_wire`` (the same fields read
back and validated), side by side.  :func:`decode` checks the body's size before unpacking
it, unpacks strictly (no msgpack extension, string map keys only), checks the envelope and
hands the fields to the class that :data:`KINDS` names; anything malformed is a
:class:`~aexec.errors.CodecError` naming the message kind and the field at fault.

Queue and topic names live beside this module, in :mod:`aexec.wire`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeGuard

import msgpack

from aexec.codec import DEFAULT_MAX_BODY as MAX_BODY
from aexec.errors import CodecError
from aexec.types import ErrorInfo

VERSION = 1

CONTROL_COMMANDS = ("ping", "terminate", "cancel")


class _Wire:
    """What every message shares: ``encode`` around the class's ``KIND`` and ``to_wire``."""

    __slots__ = ()
    KIND: ClassVar[str]

    def to_wire(self) -> list[Any]:
        """The message's fields, in wire order (after ``[VERSION, KIND]``)."""
        raise NotImplementedError

    def encode(self) -> bytes:
        body: bytes = msgpack.packb([VERSION, self.KIND, *self.to_wire()], use_bin_type=True)
        return body


@dataclass(slots=True)
class StepMessage(_Wire):
    """Run ``attempt`` of step ``step_key`` (code name ``name``) of run ``run_id``.

    ``call`` is the step's encoded ``[args, kwargs]`` template; ``inputs`` are the encoded
    upstream outputs it refers to by slot (an encoded ``ObjectRef`` for large ones).
    """

    KIND: ClassVar[str] = "step"

    run_id: str
    step_key: str
    attempt: int
    name: str
    call: bytes
    inputs: Sequence[bytes]
    timeout: float | None
    reply_to: str

    def to_wire(self) -> list[Any]:
        return [
            self.run_id,
            self.step_key,
            self.attempt,
            self.name,
            self.call,
            self.inputs,
            self.timeout,
            self.reply_to,
        ]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Self:
        run_id, key, attempt, name, call, inputs, timeout, reply_to = _arity(cls, fields, 8)
        v = _Check(cls.KIND)
        return cls(
            v.text(run_id, "run id"),
            v.text(key, "step key"),
            v.count(attempt, "attempt"),
            v.text(name, "step name"),
            v.blob(call, "call"),
            v.blob_list(inputs, "inputs"),
            None if timeout is None else v.number(timeout, "timeout"),
            v.text(reply_to, "reply_to"),
        )


@dataclass(slots=True)
class Completion(_Wire):
    """An attempt finished: ``output`` (encoded) when ``error`` is None."""

    KIND: ClassVar[str] = "done"

    run_id: str
    step_key: str
    attempt: int
    output: bytes | None
    error: ErrorInfo | None
    worker: str
    started_at: float
    finished_at: float

    def to_wire(self) -> list[Any]:
        return [
            self.run_id,
            self.step_key,
            self.attempt,
            self.output,
            None if self.error is None else self.error.to_wire(),
            self.worker,
            self.started_at,
            self.finished_at,
        ]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Self:
        run_id, key, attempt, output, error, worker, started, finished = _arity(cls, fields, 8)
        v = _Check(cls.KIND)
        if (output is None) == (error is None):
            raise v.error("a completion has exactly one of output, error")
        return cls(
            v.text(run_id, "run id"),
            v.text(key, "step key"),
            v.count(attempt, "attempt"),
            None if output is None else v.blob(output, "output"),
            None if error is None else ErrorInfo.from_wire(error),  # lenient: still a failure
            v.text(worker, "worker"),
            v.number(started, "started_at"),
            v.number(finished, "finished_at"),
        )


@dataclass(slots=True)
class Progress(_Wire):
    """A step started, or reported progress (``fraction`` in [0, 1] and/or ``message``)."""

    KIND: ClassVar[str] = "progress"

    run_id: str
    step_key: str
    attempt: int
    worker: str
    ts: float
    fraction: float | None = None
    message: str | None = None

    def to_wire(self) -> list[Any]:
        return [
            self.run_id,
            self.step_key,
            self.attempt,
            self.worker,
            self.ts,
            self.fraction,
            self.message,
        ]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Self:
        run_id, key, attempt, worker, ts, fraction, message = _arity(cls, fields, 7)
        v = _Check(cls.KIND)
        return cls(
            v.text(run_id, "run id"),
            v.text(key, "step key"),
            v.count(attempt, "attempt"),
            v.text(worker, "worker"),
            v.number(ts, "ts"),
            None if fraction is None else v.number(fraction, "fraction"),
            None if message is None else v.text(message, "message"),
        )


@dataclass(slots=True)
class Heartbeat(_Wire):
    """A worker is alive and running these ``(run_id, step_key, attempt)`` attempts."""

    KIND: ClassVar[str] = "heartbeat"

    worker: str
    ts: float
    running: list[tuple[str, str, int]]

    def to_wire(self) -> list[Any]:
        return [self.worker, self.ts, [list(r) for r in self.running]]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Self:
        worker, ts, running = _arity(cls, fields, 3)
        v = _Check(cls.KIND)
        if not isinstance(running, list) or not all(_is_attempt(r) for r in running):
            raise v.error("running must be a list of [run id, step key, attempt]")
        return cls(
            v.text(worker, "worker"), v.number(ts, "ts"), [(r[0], r[1], r[2]) for r in running]
        )


@dataclass(slots=True)
class Control(_Wire):
    """A command broadcast to workers or coordinators.

    ``ping`` (answer with WorkerInfo on ``reply_to``), ``terminate`` (drain and exit), or
    ``cancel`` (stop the in-flight attempts of run ``run_id``).  ``target`` is a worker
    name, or None for every one.
    """

    KIND: ClassVar[str] = "control"

    command: str
    target: str | None = None
    reply_to: str | None = None
    run_id: str | None = None

    def to_wire(self) -> list[Any]:
        return [self.command, self.target, self.reply_to, self.run_id]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Self:
        command, target, reply_to, run_id = _arity(cls, fields, 4)
        v = _Check(cls.KIND)
        if not isinstance(command, str) or command not in CONTROL_COMMANDS:
            raise v.error(f"unknown command {command!r}")
        return cls(
            command,
            None if target is None else v.text(target, "target"),
            None if reply_to is None else v.text(reply_to, "reply_to"),
            None if run_id is None else v.text(run_id, "run id"),
        )


@dataclass(slots=True)
class WorkerInfo(_Wire):
    """A worker's answer to ``ping``; durations in seconds."""

    KIND: ClassVar[str] = "worker_info"

    name: str
    host: str
    pid: int
    queues: list[str]
    in_flight: int
    heartbeat_age: float
    started_at: float

    def to_wire(self) -> list[Any]:
        return [
            self.name,
            self.host,
            self.pid,
            self.queues,
            self.in_flight,
            self.heartbeat_age,
            self.started_at,
        ]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Self:
        name, host, pid, queues, in_flight, age, started = _arity(cls, fields, 7)
        v = _Check(cls.KIND)
        return cls(
            v.text(name, "name"),
            v.text(host, "host"),
            v.count(pid, "pid"),
            v.text_list(queues, "queues"),
            v.count(in_flight, "in_flight"),
            v.number(age, "heartbeat_age"),
            v.number(started, "started_at"),
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
class Submit(_Wire):
    """A library client asks a coordinator service to run ``plan`` (its encoded bytes).

    Events of the run are sent to ``notify`` (the client's queue) as they are recorded.
    """

    KIND: ClassVar[str] = "submit"

    run_id: str
    plan: bytes
    priority: int
    notify: str | None

    def to_wire(self) -> list[Any]:
        return [self.run_id, self.plan, self.priority, self.notify]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Self:
        run_id, plan, priority, notify = _arity(cls, fields, 4)
        v = _Check(cls.KIND)
        return cls(
            v.text(run_id, "run id"),
            v.blob(plan, "plan"),
            v.count(priority, "priority"),
            None if notify is None else v.text(notify, "notify"),
        )


@dataclass(slots=True)
class Events(_Wire):
    """Recorded events of one run, for the client that submitted it.

    Each record is ``[seq, ts, kind, step, attempt, data, output]``
    (:func:`aexec.events.to_record`); the client validates each one as it reads it.
    """

    KIND: ClassVar[str] = "events"

    run_id: str
    records: list[list[Any]]

    def to_wire(self) -> list[Any]:
        return [self.run_id, self.records]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Self:
        run_id, records = _arity(cls, fields, 2)
        v = _Check(cls.KIND)
        if not isinstance(records, list) or not all(
            isinstance(r, list) and len(r) == 7 for r in records
        ):
            raise v.error("records must be a list of 7-field event records")
        return cls(v.text(run_id, "run id"), records)


Message = StepMessage | Completion | Progress | Heartbeat | Control | WorkerInfo | Submit | Events

KINDS: dict[str, Callable[[list[Any]], Message]] = {
    StepMessage.KIND: StepMessage.from_wire,
    Completion.KIND: Completion.from_wire,
    Progress.KIND: Progress.from_wire,
    Heartbeat.KIND: Heartbeat.from_wire,
    Control.KIND: Control.from_wire,
    WorkerInfo.KIND: WorkerInfo.from_wire,
    Submit.KIND: Submit.from_wire,
    Events.KIND: Events.from_wire,
}
"""Each message kind and the ``from_wire`` that reads its fields."""


def decode(body: bytes) -> Message:
    """Decode and validate one message; :class:`CodecError` for anything malformed."""
    if len(body) > MAX_BODY:
        raise CodecError(f"message of {len(body)} bytes exceeds the {MAX_BODY}-byte limit")
    try:
        m = msgpack.unpackb(body, raw=False, ext_hook=_reject_ext, strict_map_key=True)
    except CodecError:
        raise
    except Exception as exc:  # msgpack raises a zoo of types on bad input
        raise CodecError(f"cannot decode message: {type(exc).__name__}: {exc}") from exc
    if not isinstance(m, list) or len(m) < 2:
        raise CodecError("malformed message: not an aexec message")
    version, kind = m[0], m[1]
    if type(version) is not int or version != VERSION:
        raise CodecError(f"unsupported message version {version!r}")
    from_wire = KINDS.get(kind) if isinstance(kind, str) else None
    if from_wire is None:
        raise CodecError(f"malformed message: unknown kind {kind!r}")
    return from_wire(m[2:])


# -- validation ----------------------------------------------------------------------------


def _reject_ext(code: int, data: bytes) -> Any:
    raise CodecError(f"unexpected msgpack extension type {code} in a message envelope")


def _arity(cls: type[_Wire], fields: list[Any], count: int) -> list[Any]:
    if len(fields) != count:
        raise CodecError(
            f"malformed {cls.KIND} message: {len(fields)} fields where {count} are expected"
        )
    return fields


def _is_attempt(entry: Any) -> bool:
    return (
        isinstance(entry, list)
        and len(entry) == 3
        and isinstance(entry[0], str)
        and isinstance(entry[1], str)
        and _is_count(entry[2])
    )


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _Check:
    """Field validators whose errors name the message kind and the field."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def error(self, problem: str) -> CodecError:
        return CodecError(f"malformed {self.kind} message: {problem}")

    def text(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise self.error(f"{field} must be a string")
        return value

    def count(self, value: Any, field: str) -> int:
        if not _is_count(value):
            raise self.error(f"{field} must be a non-negative integer")
        return value

    def number(self, value: Any, field: str) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.error(f"{field} must be a number")
        return float(value)

    def blob(self, value: Any, field: str) -> bytes:
        if not isinstance(value, bytes):
            raise self.error(f"{field} must be bytes")
        return value

    def blob_list(self, value: Any, field: str) -> list[bytes]:
        if not isinstance(value, list) or not all(isinstance(i, bytes) for i in value):
            raise self.error(f"{field} must be a list of bytes")
        return value

    def text_list(self, value: Any, field: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
            raise self.error(f"{field} must be a list of strings")
        return value
