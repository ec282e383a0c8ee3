"""Celery's wire, spoken without Celery: task messages (protocol v2) out, results back.

Pure functions, no I/O.  A Celery worker receives what :func:`task_message` builds exactly
as if ``apply_async`` had sent it: the headers ``lang``, ``task``, ``id``, ``root_id``,
``parent_id``, ``group``, ``retries``, ``eta``, ``expires``, ``timelimit``, ``argsrepr``,
``kwargsrepr``, ``origin``..., and the body ``[args, kwargs, embed]`` in JSON (the
default) or msgpack.  No pickle, ever: a result in any other content type is refused.

The task id names the attempt, so that a result, however it comes back (the ``rpc://``
backend's reply, a Redis key or channel) and to whichever coordinator, finds its step:
``aexec.<len(run id)>.<run id>.<attempt>.<step key>`` (:func:`task_id`,
:func:`parse_task_id`).

Values cross as JSON-compatible data, with kombu's markers for what JSON lacks
(``{"__type__": "datetime", "__value__": ...}`` for datetime, date, time, Decimal, UUID
and bytes), so a Celery task receives a ``datetime`` where aexec passed one.  A value that
does not fit (a set, an object) is a :class:`~aexec.errors.CodecError` naming it.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from aexec.errors import CodecError
from aexec.types import MAX_ERROR_MESSAGE, MAX_TRACEBACK, ErrorInfo, clip, clip_tail

JSON = "application/json"
MSGPACK = "application/x-msgpack"
SERIALIZERS = {"json": JSON, "msgpack": MSGPACK}
MAX_TASK_ID = 255  # an AMQP short string: the correlation id carries the task id

PENDING, STARTED, RETRY = "PENDING", "STARTED", "RETRY"
SUCCESS, FAILURE, REVOKED = "SUCCESS", "FAILURE", "REVOKED"
READY = frozenset({SUCCESS, FAILURE, REVOKED})

_ORIGIN = f"aexec@{socket.gethostname()}"


# -- task ids ----------------------------------------------------------------------------


def task_id(run_id: str, attempt: int, step_key: str) -> str:
    """The Celery task id of ``attempt`` of step ``step_key`` of run ``run_id``."""
    tid = f"aexec.{len(run_id)}.{run_id}.{attempt}.{step_key}"
    if len(tid.encode()) > MAX_TASK_ID:
        raise CodecError(
            f"the Celery task id of step {step_key!r} would be {len(tid.encode())} bytes, "
            f"over AMQP's {MAX_TASK_ID}: use a shorter step key or run id"
        )
    return tid


def parse_task_id(tid: str) -> tuple[str, int, str] | None:
    """``(run_id, attempt, step_key)`` of a task id :func:`task_id` made; None for another
    (a task some other client sent)."""
    if not tid.startswith("aexec."):
        return None
    try:
        size, rest = tid[6:].split(".", 1)
        n = int(size)
        run_id, rest = rest[:n], rest[n:]
        if len(run_id) != n or not rest.startswith("."):
            return None
        attempt, key = rest[1:].split(".", 1)
        return run_id, int(attempt), key
    except ValueError:
        return None


# -- values ------------------------------------------------------------------------------


def _marked(kind: str, value: Any) -> dict[str, Any]:
    return {"__type__": kind, "__value__": value}


def to_celery(value: Any, where: str = "value") -> Any:
    """``value`` as JSON-compatible data (kombu's markers for the types JSON lacks); a
    :class:`CodecError` naming ``where`` and the type for one that does not fit."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CodecError(f"{where} is {value!r}, which JSON cannot carry")
        return value
    if isinstance(value, list | tuple):
        return [to_celery(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CodecError(f"{where} has a key {k!r:.40} that is not a string (JSON)")
            out[k] = to_celery(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, dt.datetime):
        return _marked("datetime", value.isoformat())
    if isinstance(value, dt.date):
        return _marked("date", value.isoformat())
    if isinstance(value, dt.time):
        return _marked("time", value.isoformat())
    if isinstance(value, decimal.Decimal):
        return _marked("decimal", str(value))
    if isinstance(value, uuid.UUID):
        return _marked("uuid", {"hex": value.hex})
    if isinstance(value, bytes):
        try:
            return _marked("bytes", value.decode("utf-8"))
        except UnicodeDecodeError:
            return _marked("base64", base64.b64encode(value).decode("ascii"))
    raise CodecError(
        f"{where} is a {type(value).__qualname__}, which does not cross to Celery as JSON "
        "(use None, bool, int, float, str, bytes, list, dict, datetime, date, time, "
        "Decimal or UUID)"
    )


_DECODERS: dict[str, Any] = {
    "datetime": dt.datetime.fromisoformat,
    "date": lambda v: dt.datetime.fromisoformat(v).date(),
    "time": dt.time.fromisoformat,
    "decimal": decimal.Decimal,
    "uuid": lambda v: uuid.UUID(**v),
    "bytes": lambda v: v.encode("utf-8"),
    "base64": lambda v: base64.b64decode(v.encode("ascii")),
}


def _object_hook(obj: dict[str, Any]) -> Any:
    if obj.keys() == {"__type__", "__value__"}:
        decoder = _DECODERS.get(obj["__type__"])
        if decoder is not None:
            try:
                return decoder(obj["__value__"])
            except (TypeError, ValueError, decimal.InvalidOperation) as exc:
                raise CodecError(f"bad {obj['__type__']} value from Celery: {exc}") from exc
    return obj


def dumps(value: Any, content_type: str) -> bytes:
    """Encode ``value`` (made by :func:`to_celery`) as ``content_type``."""
    if content_type == MSGPACK:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def loads(body: bytes, content_type: str | None, content_encoding: str | None = None) -> Any:
    """Decode a body Celery sent; a :class:`CodecError` for a content type that is not JSON
    or msgpack (never pickle) or for a body that does not decode."""
    try:
        if content_type == MSGPACK:
            return _unmark(msgpack.unpackb(body, raw=False, strict_map_key=False))
        if content_type in (JSON, None, ""):
            return json.loads(body.decode(content_encoding or "utf-8"), object_hook=_object_hook)
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"cannot decode a Celery message: {type(exc).__name__}: {exc}") from exc
    raise CodecError(f"refused a Celery message in {content_type!r} (only JSON and msgpack)")


def _unmark(value: Any) -> Any:
    if isinstance(value, list):
        return [_unmark(v) for v in value]
    if isinstance(value, dict):
        return _object_hook({k: _unmark(v) for k, v in value.items()})
    return value


# -- task messages -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """How a Celery step's task is sent: ``serializer`` ``json`` or ``msgpack``;
    ``countdown`` (seconds) or ``eta`` (ISO 8601) delays it; ``expires`` (seconds) drops it
    if not started by then; ``time_limit``/``soft_time_limit`` (seconds) bound its run."""

    serializer: str = "json"
    countdown: float | None = None
    eta: str | None = None
    expires: float | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TaskOptions:
        return cls(**{k: v for k, v in options.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """A Celery task message as AMQP carries it."""

    task_id: str
    body: bytes
    headers: dict[str, Any]
    content_type: str
    priority: int


def task_message(
    name: str,
    tid: str,
    args: list[Any],
    kwargs: dict[str, Any],
    options: TaskOptions,
    *,
    priority: int = 0,
    root_id: str | None = None,
    now: float | None = None,
) -> TaskMessage:
    """The protocol v2 message that runs task ``name`` as ``tid`` with ``args`` and
    ``kwargs`` (JSON-compatible already: see :func:`to_celery`)."""
    content_type = SERIALIZERS.get(options.serializer)
    if content_type is None:
        raise CodecError(
            f"Celery serializer {options.serializer!r} is not supported (json or msgpack; "
            "never pickle)"
        )
    now = time.time() if now is None else now
    eta = options.eta
    if eta is None and options.countdown:
        eta = dt.datetime.fromtimestamp(now + options.countdown, dt.UTC).isoformat()
    expires = None
    if options.expires is not None:
        expires = dt.datetime.fromtimestamp(now + options.expires, dt.UTC).isoformat()
    headers: dict[str, Any] = {
        "lang": "py",
        "task": name,
        "id": tid,
        "shadow": None,
        "eta": eta,
        "expires": expires,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [options.time_limit, options.soft_time_limit],
        "root_id": root_id or tid,
        "parent_id": None,
        "argsrepr": clip(repr(args), 1024),
        "kwargsrepr": clip(repr(kwargs), 1024),
        "origin": f"{_ORIGIN}:{os.getpid()}",
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = dumps([args, kwargs, embed], content_type)
    return TaskMessage(tid, body, headers, content_type, priority)


def revoke_message(task_ids: list[str], *, terminate: bool, signal: str = "SIGTERM") -> bytes:
    """The remote-control broadcast (``celery.pidbox``) that revokes ``task_ids``."""
    return dumps(
        {
            "method": "revoke",
            "arguments": {"task_id": task_ids, "terminate": terminate, "signal": signal},
            "destination": None,
            "pattern": None,
            "matcher": None,
        },
        JSON,
    )


# -- results -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskResult:
    """A task's state as a result backend reports it."""

    task_id: str
    status: str
    result: Any
    traceback: str | None
    worker: str | None = None

    @classmethod
    def from_meta(cls, meta: Any, tid: str | None = None) -> TaskResult:
        """From a backend's meta dict (``task_id``, ``status``, ``result``, ``traceback``);
        ``tid`` when the meta does not name it (a Redis key does)."""
        if not isinstance(meta, dict):
            raise CodecError(f"a Celery result must be a mapping, not {type(meta).__name__}")
        task = meta.get("task_id", tid)
        status = meta.get("status")
        if not isinstance(task, str) or not isinstance(status, str):
            raise CodecError("a Celery result without a task id or status")
        tb = meta.get("traceback")
        worker = meta.get("worker")
        result = meta.get("result")
        if status == STARTED and isinstance(result, dict) and worker is None:
            worker = result.get("hostname")
        return cls(
            task,
            status,
            result,
            tb if isinstance(tb, str) else None,
            worker if isinstance(worker, str) else None,
        )

    @property
    def ready(self) -> bool:
        return self.status in READY

    def error(self) -> ErrorInfo:
        """The failure this result reports (FAILURE, REVOKED), as aexec records errors."""
        if self.status == REVOKED:
            return ErrorInfo("TaskRevokedError", "the Celery task was revoked", "", False)
        exc = self.result if isinstance(self.result, dict) else {}
        exc_type = exc.get("exc_type")
        name = exc_type if isinstance(exc_type, str) and exc_type else "CeleryTaskError"
        raw = exc.get("exc_message")
        if isinstance(raw, list | tuple):
            message = raw[0] if len(raw) == 1 else ", ".join(map(str, raw))
        elif raw is None:
            message = "" if exc else repr(self.result)
        else:
            message = raw
        # A time limit, a lost worker or an unknown task will not succeed by retrying.
        retryable = name not in _NOT_RETRYABLE
        return ErrorInfo(
            name[:200],
            clip(str(message), MAX_ERROR_MESSAGE),
            clip_tail(self.traceback or "", MAX_TRACEBACK),
            retryable,
        )


def worker_event(event: Any) -> tuple[str, str, float | None] | None:
    """``(type, hostname, freq)`` of a Celery ``worker-*`` event (a heartbeat, online,
    offline); None for any other event."""
    if not isinstance(event, dict):
        return None
    kind, hostname, freq = event.get("type"), event.get("hostname"), event.get("freq")
    if not isinstance(kind, str) or not kind.startswith("worker-"):
        return None
    if not isinstance(hostname, str) or not hostname:
        return None
    if isinstance(freq, bool) or not isinstance(freq, int | float):
        freq = None
    return kind, hostname, None if freq is None else float(freq)


_NOT_RETRYABLE = frozenset({"NotRegistered", "TimeLimitExceeded", "SoftTimeLimitExceeded"})


__all__ = [
    "FAILURE",
    "JSON",
    "MSGPACK",
    "PENDING",
    "RETRY",
    "REVOKED",
    "STARTED",
    "SUCCESS",
    "TaskMessage",
    "TaskOptions",
    "TaskResult",
    "dumps",
    "loads",
    "parse_task_id",
    "revoke_message",
    "task_id",
    "task_message",
    "to_celery",
    "worker_event",
]
