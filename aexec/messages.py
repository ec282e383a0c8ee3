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

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import msgpack

from aexec.codec import DEFAULT_MAX_BODY as MAX_BODY
from aexec.errors import CodecError
from aexec.types import ErrorInfo, check_tags

VERSION = 1

TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
"""The W3C ``traceparent`` format (version, trace id, parent span id, flags)."""

CONTROL_COMMANDS = ("ping", "terminate", "cancel", "events")

LOST_REASONS = ("redelivered", "crashed", "stopped")
"""Why a worker reports an attempt lost (:class:`AttemptLost`)."""

RUN_ENDINGS = ("succeeded", "failed", "cancelled")


class _Wire:
    """What every message shares: ``encode`` around the class's ``KIND`` and ``to_wire``."""

    __slots__ = ()
    KIND: ClassVar[str]

    def to_wire(self) -> list[Any]:
        """The message's fields, in wire order (after ``[VERSION, KIND]``): its dataclass
        fields, in the order they are declared."""
        raise NotImplementedError

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Self:
        """The message that ``to_wire`` gave ``fields``, validated: a :class:`CodecError`
        names the field at fault; a wrong number of fields is a ``ValueError`` (both are
        reported by :func:`decode` as a CodecError naming the message kind)."""
        raise NotImplementedError

    def encode(self) -> bytes:
        body: bytes = msgpack.packb([VERSION, self.KIND, *self.to_wire()], use_bin_type=True)
        return body


class Carried(bytes):
    """The body :meth:`StepMessage.encode`, :meth:`Completion.encode` and
    :func:`completions_body` return: the encoded bytes, carrying the message they were
    encoded from.  A transport that hands bodies over within the process (the memory
    transport: an embedded run) delivers this very object, and :func:`decode` returns the
    message without unpacking and validating its own encoding again.  Everything encoding
    checks is checked as before (the body is encoded all the same, and its size is checked
    on decoding); a broker, or signing, carries only the bytes, decoded in full.

    Only messages a coordinator or a worker makes from its own typed values carry
    themselves: step messages and completions (a step's reports carry data it gave, and
    are always decoded)."""

    message: Message

    @staticmethod
    def of(body: bytes, message: Message) -> Carried:
        carried = Carried(body)
        carried.message = message
        return carried


@dataclass(slots=True)
class StepMessage(_Wire):
    """Run ``attempt`` of step ``step_key`` (code name ``name``) of run ``run_id``.

    ``call`` is the step's encoded ``[args, kwargs]`` template; ``inputs`` are the encoded
    upstream outputs it refers to by slot (an encoded ``ObjectRef`` for large ones).
    ``trace`` is the W3C ``traceparent`` of the run's span when the coordinator traces
    (:mod:`aexec.tracing`): an optional last field, absent otherwise.
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
    trace: str | None = None

    def to_wire(self) -> list[Any]:
        fields = [
            self.run_id,
            self.step_key,
            self.attempt,
            self.name,
            self.call,
            self.inputs,
            self.timeout,
            self.reply_to,
        ]
        if self.trace is not None:
            fields.append(self.trace)
        return fields

    def encode(self) -> Carried:
        return Carried.of(_Wire.encode(self), self)

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Self:
        run_id, key, attempt, name, call, inputs, timeout, reply_to, *rest = fields
        if len(rest) > 1:
            raise ValueError("too many fields")  # reported by decode() with the field count
        trace = None
        if rest:
            trace = _text(rest[0], "trace")
            if not TRACEPARENT.match(trace):
                raise CodecError("trace must be a W3C traceparent")
        return cls(
            _text(run_id, "run id"),
            _text(key, "step key"),
            _count(attempt, "attempt"),
            _text(name, "step name"),
            _blob(call, "call"),
            _blob_list(inputs, "inputs"),
            None if timeout is None else _number(timeout, "timeout"),
            _text(reply_to, "reply_to"),
            trace,
        )


@dataclass(slots=True)
class Completion(_Wire):
    """An attempt finished: ``output`` (encoded) when ``error`` is None.

    ``worker`` names the worker; ``instance`` is its process's random id (see
    :class:`Heartbeat`)."""

    KIND: ClassVar[str] = "done"

    run_id: str
    step_key: str
    attempt: int
    output: bytes | None
    error: ErrorInfo | None
    worker: str
    started_at: float
    finished_at: float
    instance: str = ""

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
            self.instance,
        ]

    def encode(self) -> Carried:
        return Carried.of(_Wire.encode(self), self)

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Self:
        run_id, key, attempt, output, error, worker, started, finished, *rest = fields
        if (output is None) == (error is None):
            raise CodecError("a completion has exactly one of output, error")
        return cls(
            _text(run_id, "run id"),
            _text(key, "step key"),
            _count(attempt, "attempt"),
            None if output is None else _blob(output, "output"),
            None if error is None else ErrorInfo.from_wire(error),  # lenient: still a failure
            _text(worker, "worker"),
            _number(started, "started_at"),
            _number(finished, "finished_at"),
            _instance(rest),
        )


@dataclass(slots=True)
class Completions(_Wire):
    """Several attempts finished on one worker, close together: ``items``, each a
    :class:`Completion` of its own, coalesced into one message to one coordinator
    (:mod:`aexec.outbox`).  A coordinator applies each item as if it had come alone; each
    is recorded exactly once, whatever else the message carries."""

    KIND: ClassVar[str] = "dones"

    items: list[Completion]

    def to_wire(self) -> list[Any]:
        return [[item.to_wire() for item in self.items]]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Self:
        (items,) = fields
        if not isinstance(items, list) or not items:
            raise CodecError("items must be a non-empty list of completions")
        completions: list[Completion] = []
        for position, item in enumerate(items):
            if not isinstance(item, list):
                raise CodecError(f"item {position} must be a completion's fields")
            try:
                completions.append(Completion.from_wire(item))
            except CodecError as exc:
                raise CodecError(f"item {position}: {exc}") from None
            except ValueError:
                raise CodecError(
                    f"item {position} has {len(item)} fields, not a completion's"
                ) from None
        return cls(completions)


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
    instance: str = ""

    def to_wire(self) -> list[Any]:
        return [
            self.run_id,
            self.step_key,
            self.attempt,
            self.worker,
            self.ts,
            self.fraction,
            self.message,
            self.instance,
        ]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Self:
        run_id, key, attempt, worker, ts, fraction, message, *rest = fields
        return cls(
            _text(run_id, "run id"),
            _text(key, "step key"),
            _count(attempt, "attempt"),
            _text(worker, "worker"),
            _number(ts, "ts"),
            None if fraction is None else _number(fraction, "fraction"),
            None if message is None else _text(message, "message"),
            _instance(rest),
        )


OUTPUT_KINDS = ("progress", "log", "stdout", "stderr", "event", "dropped")
"""The kinds of entry an :class:`Output` carries (:mod:`aexec.telemetry`)."""


@dataclass(slots=True)
class Output(_Wire):
    """What the steps running on worker ``worker`` reported since its last flush, for one
    coordinator: ``entries``, each ``[run_id, step_key, attempt, ts, kind, data]`` with
    ``kind`` one of :data:`OUTPUT_KINDS` and ``data`` a map (checked here only for its
    shape: :func:`aexec.telemetry.entry_event` trusts none of its values).  ``instance``
    is the worker process's random id (see :class:`Heartbeat`)."""

    KIND: ClassVar[str] = "output"

    worker: str
    instance: str
    ts: float
    entries: list[list[Any]]

    def to_wire(self) -> list[Any]:
        return [self.worker, self.instance, self.ts, self.entries]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Self:
        worker, instance, ts, entries = fields
        if not isinstance(entries, list):
            raise CodecError("entries must be a list")
        for entry in entries:
            if not _is_entry(entry):
                raise CodecError(
                    "each entry must be [run id, step key, attempt, ts, kind, data] with a "
                    f"kind of {', '.join(OUTPUT_KINDS)} and a map of data"
                )
        return cls(_text(worker, "worker"), _text(instance, "instance"), _number(ts, "ts"), entries)


@dataclass(slots=True)
class Heartbeat(_Wire):
    """A worker is alive and running these ``(run_id, step_key, attempt)`` attempts.

    ``instance`` is a random id of the worker's process, new at each start: liveness is
    per instance, so a worker restarted under the same name does not vouch for the steps
    its previous process lost.  (Empty from a worker that predates it: the name is used.)
    """

    KIND: ClassVar[str] = "heartbeat"

    worker: str
    ts: float
    running: list[tuple[str, str, int]]
    instance: str = ""

    def to_wire(self) -> list[Any]:
        return [self.worker, self.ts, [list(r) for r in self.running], self.instance]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Self:
        worker, ts, running, *rest = fields
        if not isinstance(running, list) or not all(_is_attempt(r) for r in running):
            raise CodecError("running must be a list of [run id, step key, attempt]")
        return cls(
            _text(worker, "worker"),
            _number(ts, "ts"),
            [(r[0], r[1], r[2]) for r in running],
            _instance(rest),
        )


@dataclass(slots=True)
class AttemptLost(_Wire):
    """Worker ``worker`` will not run (or finish) ``attempt`` of step ``step_key``, and
    acked its delivery: treat the attempt as lost (a new attempt, no retry spent).

    ``reason``: ``redelivered`` (the broker redelivered it: it may have started on a worker
    that died or lost its connection, so it must not start again), ``crashed`` (the child
    process running it died) or ``stopped`` (the worker stopped past its drain grace).
    ``instance`` is the worker process's random id (see :class:`Heartbeat`).
    """

    KIND: ClassVar[str] = "lost"

    run_id: str
    step_key: str
    attempt: int
    worker: str
    reason: str
    instance: str = ""

    def to_wire(self) -> list[Any]:
        return [self.run_id, self.step_key, self.attempt, self.worker, self.reason, self.instance]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Self:
        run_id, key, attempt, worker, reason, *rest = fields
        if not isinstance(reason, str) or reason not in LOST_REASONS:
            raise CodecError(f"unknown reason {reason!r}")
        return cls(
            _text(run_id, "run id"),
            _text(key, "step key"),
            _count(attempt, "attempt"),
            _text(worker, "worker"),
            reason,
            _instance(rest),
        )


@dataclass(slots=True)
class RunEnded(_Wire):
    """Run ``run_id`` ended with ``status`` (``succeeded``, ``failed``, ``cancelled``) at
    ``ts``: announced on :data:`~aexec.wire.RUNS_ENDED_TOPIC` once recorded."""

    KIND: ClassVar[str] = "run_ended"

    run_id: str
    status: str
    ts: float

    def to_wire(self) -> list[Any]:
        return [self.run_id, self.status, self.ts]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Self:
        run_id, status, ts = fields
        if not isinstance(status, str) or status not in RUN_ENDINGS:
            raise CodecError(f"unknown run status {status!r}")
        return cls(_text(run_id, "run id"), status, _number(ts, "ts"))


@dataclass(slots=True)
class Control(_Wire):
    """A command broadcast to workers or coordinators.

    ``ping`` (answer with WorkerInfo on ``reply_to``) and ``terminate`` (drain and exit),
    for workers; ``cancel`` (cancel run ``run_id``, wherever it is driven, for ``reason``)
    and ``events`` (send run ``run_id``'s events so far to ``reply_to``), for coordinators.
    ``target`` is a worker name, or None for every one.  ``reason`` travels as a fifth
    field only when it is set (a message without it reads as before).
    """

    KIND: ClassVar[str] = "control"

    command: str
    target: str | None = None
    reply_to: str | None = None
    run_id: str | None = None
    reason: str | None = None

    def to_wire(self) -> list[Any]:
        fields = [self.command, self.target, self.reply_to, self.run_id]
        return fields if self.reason is None else [*fields, self.reason]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Self:
        if len(fields) == 5:
            *fields, reason = fields
        else:
            reason = None
        command, target, reply_to, run_id = fields
        if not isinstance(command, str) or command not in CONTROL_COMMANDS:
            raise CodecError(f"unknown command {command!r}")
        return cls(
            command,
            None if target is None else _text(target, "target"),
            None if reply_to is None else _text(reply_to, "reply_to"),
            None if run_id is None else _text(run_id, "run id"),
            None if reason is None else _text(reason, "reason"),
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
    steps: list[str] = field(default_factory=list)  # names it serves, ``name@version`` too

    def to_wire(self) -> list[Any]:
        return [
            self.name,
            self.host,
            self.pid,
            self.queues,
            self.in_flight,
            self.heartbeat_age,
            self.started_at,
            self.steps,
        ]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Self:
        name, host, pid, queues, in_flight, age, started, *rest = fields
        return cls(
            _text(name, "name"),
            _text(host, "host"),
            _count(pid, "pid"),
            _text_list(queues, "queues"),
            _count(in_flight, "in_flight"),
            _number(age, "heartbeat_age"),
            _number(started, "started_at"),
            _text_list(rest[0], "steps") if rest else [],  # none from workers before 0.2
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
            "steps": self.steps,
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
    tags: dict[str, str] = field(default_factory=dict)
    parent: str | None = None  # the run this one reruns
    from_failure: bool = False  # reusing the outputs of the steps that succeeded in parent

    def to_wire(self) -> list[Any]:
        # Without tags, the four fields coordinators before tags read; a rerun adds two.
        fields = [self.run_id, self.plan, self.priority, self.notify]
        if self.parent is not None:
            return [*fields, self.tags, self.parent, self.from_failure]
        return [*fields, self.tags] if self.tags else fields

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Self:
        run_id, plan, priority, notify, *rest = fields
        if len(rest) not in (0, 1, 3):
            raise ValueError(f"a submit has 4, 5 or 7 fields, not {len(fields)}")
        try:
            tags = check_tags(rest[0]) if rest else {}
        except ValueError as exc:
            raise CodecError(f"malformed submit: {exc}") from None
        parent, from_failure = rest[1:] if len(rest) == 3 else (None, False)
        if not isinstance(from_failure, bool):
            raise CodecError("malformed submit: from_failure must be a boolean")
        return cls(
            _text(run_id, "run id"),
            _blob(plan, "plan"),
            _count(priority, "priority"),
            None if notify is None else _text(notify, "notify"),
            tags,
            None if parent is None else _text(parent, "parent"),
            from_failure,
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
        run_id, records = fields
        if not isinstance(records, list) or not all(
            isinstance(r, list) and len(r) == 7 for r in records
        ):
            raise CodecError("records must be a list of 7-field event records")
        return cls(_text(run_id, "run id"), records)


Message = (
    StepMessage
    | Completion
    | Completions
    | Progress
    | Output
    | Heartbeat
    | AttemptLost
    | RunEnded
    | Control
    | WorkerInfo
    | Submit
    | Events
)

KINDS: dict[str, type[Message]] = {
    cls.KIND: cls
    for cls in (
        StepMessage,
        Completion,
        Completions,
        Progress,
        Output,
        Heartbeat,
        AttemptLost,
        RunEnded,
        Control,
        WorkerInfo,
        Submit,
        Events,
    )
}
"""Each message kind and its class."""


def decode(body: bytes) -> Message:
    """Decode and validate one message; :class:`CodecError` for anything malformed."""
    if len(body) > MAX_BODY:
        raise CodecError(f"message of {len(body)} bytes exceeds the {MAX_BODY}-byte limit")
    if type(body) is Carried:  # handed over in this process: encoded from this message
        return body.message
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
    try:
        cls = KINDS[kind]
    except (KeyError, TypeError):  # TypeError: an unhashable kind
        raise CodecError(f"malformed message: unknown kind {kind!r}") from None
    try:
        return cls.from_wire(m[2:])
    except CodecError as exc:
        raise CodecError(f"malformed {kind} message: {exc}") from None
    except ValueError:  # from_wire unpacks its fields: too few or too many
        expected = len(dataclasses.fields(cls))
        raise CodecError(
            f"malformed {kind} message: {len(m) - 2} fields where {expected} are expected"
        ) from None


def pack_completion(completion: Completion) -> bytes:
    """``completion``'s fields packed alone: an item of a :class:`Completions` body (see
    :func:`completions_body`), packed once whether it travels alone or with others."""
    item: bytes = msgpack.packb(completion.to_wire(), use_bin_type=True)
    return item


def completions_body(items: Sequence[bytes], completions: Sequence[Completion]) -> Carried:
    """The body of a :class:`Completions` message of ``completions``, whose items
    :func:`pack_completion` packed already (at least one), without packing them again."""
    packer = msgpack.Packer(use_bin_type=True)
    parts: list[bytes] = [
        packer.pack_array_header(3),
        packer.pack(VERSION),
        packer.pack(Completions.KIND),
        packer.pack_array_header(len(items)),
        *items,
    ]
    return Carried.of(b"".join(parts), Completions(list(completions)))


# -- validation ----------------------------------------------------------------------------
# Each validator names the field at fault; decode() puts the message kind in front.


def _reject_ext(code: int, data: bytes) -> Any:
    raise CodecError(f"unexpected msgpack extension type {code} in a message envelope")


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise CodecError(f"{field} must be a string")
    return value


def _count(value: Any, field: str) -> int:
    if type(value) is not int or value < 0:  # not a bool either
        raise CodecError(f"{field} must be a non-negative integer")
    return value


def _number(value: Any, field: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise CodecError(f"{field} must be a number")
    return float(value)


def _blob(value: Any, field: str) -> bytes:
    if not isinstance(value, bytes):
        raise CodecError(f"{field} must be bytes")
    return value


def _blob_list(value: Any, field: str) -> list[bytes]:
    if not isinstance(value, list):
        raise CodecError(f"{field} must be a list of bytes")
    for item in value:  # a loop, not all(...): step messages are decoded once per step
        if not isinstance(item, bytes):
            raise CodecError(f"{field} must be a list of bytes")
    return value


def _text_list(value: Any, field: str) -> list[str]:
    if not isinstance(value, list):
        raise CodecError(f"{field} must be a list of strings")
    for item in value:
        if not isinstance(item, str):
            raise CodecError(f"{field} must be a list of strings")
    return value


def _instance(rest: list[Any]) -> str:
    """The optional last field of the messages a worker sends: its instance id (absent
    from a worker that predates it)."""
    if not rest:
        return ""
    if len(rest) > 1:
        raise ValueError("too many fields")  # reported by decode() with the field count
    return _text(rest[0], "instance")


def _is_attempt(entry: Any) -> bool:
    return (
        isinstance(entry, list)
        and len(entry) == 3
        and isinstance(entry[0], str)
        and isinstance(entry[1], str)
        and isinstance(entry[2], int)
        and not isinstance(entry[2], bool)
        and entry[2] >= 0
    )


def _is_entry(entry: Any) -> bool:
    return (
        isinstance(entry, list)
        and len(entry) == 6
        and isinstance(entry[0], str)
        and isinstance(entry[1], str)
        and type(entry[2]) is int
        and entry[2] >= 0
        and isinstance(entry[3], int | float)
        and not isinstance(entry[3], bool)
        and entry[4] in OUTPUT_KINDS
        and isinstance(entry[5], dict)
    )
