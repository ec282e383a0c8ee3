"""Small value types shared by every layer: statuses and error records."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class StepStatus(StrEnum):
    PENDING = "pending"  # waiting for its inputs
    QUEUED = "queued"  # dispatched to its queue, no worker has reported it yet
    RUNNING = "running"  # a worker reported it started
    RETRYING = "retrying"  # failed an attempt, waiting for the backoff to elapse
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # an upstream step failed, or the run was cancelled
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in _FINISHED_STEP


_FINISHED_STEP = frozenset(
    {StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED}
)


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


MAX_ERROR_MESSAGE = 16 * 1024
MAX_TRACEBACK = 64 * 1024
"""An error record keeps at most this many characters of a message (its start) and of a
traceback (its end, where the error is): a failure must fit in the message that reports
it, whatever the step raised."""


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A step failure as data: it crosses processes and code bases, never as a pickle."""

    type: str
    message: str
    traceback: str = ""
    retryable: bool = True

    @classmethod
    def from_exception(cls, exc: BaseException, *, retryable: bool = True) -> ErrorInfo:
        """The record of ``exc``: its class name as ``type``, its message, and its formatted
        traceback if it was raised (one aexec only detects, such as a
        :class:`~aexec.errors.WorkerLostError`, has none); both clipped (``MAX_ERROR_MESSAGE``,
        ``MAX_TRACEBACK``)."""
        tb = ""
        if exc.__traceback__ is not None:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(
            type(exc).__name__[:200],
            clip(str(exc), MAX_ERROR_MESSAGE),
            clip_tail(tb, MAX_TRACEBACK),
            retryable,
        )

    def to_wire(self) -> list[Any]:
        return [self.type, self.message, self.traceback, self.retryable]

    @classmethod
    def from_wire(cls, data: Any) -> ErrorInfo:
        if (
            isinstance(data, list)
            and len(data) == 4
            and isinstance(data[0], str)
            and isinstance(data[1], str)
            and isinstance(data[2], str)
            and isinstance(data[3], bool)
        ):
            return cls(data[0], data[1], data[2], data[3])
        return cls("MalformedError", f"malformed error record: {data!r:.200}", "", False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
            "retryable": self.retryable,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorInfo:
        return cls(
            str(data.get("type", "Error")),
            str(data.get("message", "")),
            str(data.get("traceback", "")),
            bool(data.get("retryable", True)),
        )

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


MAX_TAGS = 20
MAX_TAG_KEY = 64
MAX_TAG_VALUE = 256


def check_tags(tags: object) -> dict[str, str]:
    """``tags`` as a run's labels, or a ValueError naming what is wrong: a mapping of at
    most :data:`MAX_TAGS` non-empty text keys (at most :data:`MAX_TAG_KEY` characters, no
    ``=``) to text values (at most :data:`MAX_TAG_VALUE`)."""
    if not isinstance(tags, dict):
        raise ValueError(f"tags must be a mapping of text to text, not {type(tags).__name__}")
    if len(tags) > MAX_TAGS:
        raise ValueError(f"a run has at most {MAX_TAGS} tags, not {len(tags)}")
    for key, value in tags.items():
        if not isinstance(key, str) or not key or len(key) > MAX_TAG_KEY or "=" in key:
            raise ValueError(
                f"tag key {key!r} must be text of 1..{MAX_TAG_KEY} characters without '='"
            )
        if not isinstance(value, str) or len(value) > MAX_TAG_VALUE:
            raise ValueError(f"tag {key!r} must have a text value of at most {MAX_TAG_VALUE}")
        if "\x00" in key or "\x00" in value:
            raise ValueError(f"tag {key!r} must not contain NUL characters")
    return dict(tags)


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def clip_tail(text: str, limit: int) -> str:
    """The last ``limit`` characters of ``text``, saying how much was cut before them."""
    if len(text) <= limit:
        return text
    return f"({len(text) - limit} characters cut) ...{text[-limit:]}"
