"""The one exception tree of aexec.

::

    AexecError
    ├── DefinitionError        a step or pipeline is defined wrongly (names file:line)
    ├── PlanError              a plan is invalid: a cycle, an unknown step, bad data
    │   └── ParameterError     an unknown, missing or ill-typed pipeline parameter
    ├── CodecError             a value cannot be encoded, or a body cannot be decoded
    │   ├── InputError         a step's call or inputs cannot be decoded on the worker
    │   └── ValueTooLargeError a value over ``max_value_size``, a message over the cap
    ├── ConfigError            a bad URL, flag or configuration file
    ├── LoadError              a pipeline file or worker module cannot be loaded
    ├── BackendError           a backend failed or cannot be reached
    │   ├── TransportError     the broker (RabbitMQ) or the in-memory transport
    │   │   ├── PublishError   some messages of a batch were not confirmed (``unsent``)
    │   │   └── UnroutableError   a message was published to a queue that does not exist
    │   ├── StoreError         the run store (PostgreSQL, SQLite, memory)
    │   │   ├── StoreUnavailableError   transient: locked, disconnected, timed out
    │   │   └── LeaseLostError          another coordinator owns the run now (``run_ids``)
    │   └── ObjectStoreError   the object store (S3, a directory, memory)
    │       └── ObjectNotFoundError
    ├── StepTimeoutError       a step ran longer than its timeout
    ├── UnknownStepError       a worker was sent a step it does not serve
    ├── WorkerLostError        the worker running a step stopped heartbeating
    └── RunFailedError         a run ended failed or cancelled; carries the step errors

Backend exceptions are translated at the adapter boundary with ``raise ... from exc``.

A step's failure crosses processes as data, an :class:`~aexec.types.ErrorInfo` whose
``type`` is the exception's class name: ``InputError``, ``UnknownStepError``,
``WorkerLostError``, ``StepTimeoutError`` and ``ValueTooLargeError`` are the names aexec
itself gives a step's failure; :class:`RunFailedError` maps each failed step to its record
(``RunFailed`` is the same class under its first name).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aexec.types import ErrorInfo


class AexecError(Exception):
    """Root of every error aexec raises on purpose."""


class DefinitionError(AexecError):
    """A step or pipeline definition is wrong; the message names the user's file and line."""


class PlanError(AexecError):
    """A plan cannot be compiled or loaded."""


class ParameterError(PlanError):
    """A pipeline parameter is unknown, missing or of the wrong type."""


class CodecError(AexecError):
    """A value cannot be encoded, or bytes cannot be decoded."""


class ConfigError(AexecError):
    """A configuration value (URL, flag, file) is invalid."""


class LoadError(AexecError):
    """A pipeline file or worker module cannot be loaded."""


class BackendError(AexecError):
    """A backend failed or could not be reached."""


class TransportError(BackendError):
    """The message transport failed."""


class PublishError(TransportError):
    """Some messages of a batch were not confirmed; ``unsent`` holds them, to publish again."""

    def __init__(self, message: str, unsent: Sequence[tuple[str, bytes, int]]) -> None:
        super().__init__(message)
        self.unsent = list(unsent)


class UnroutableError(TransportError):
    """A message was published to a queue that does not exist: no retry can deliver it
    (unless someone declares the queue again), so a caller gives it up at once."""


class StoreError(BackendError):
    """The run store failed."""


class StoreUnavailableError(StoreError):
    """The store is unavailable for now (locked, disconnected, timed out): try again."""


class LeaseLostError(StoreError):
    """A fenced write was refused: these runs (``run_ids``) are no longer owned by the
    writer at the epoch it holds, because another coordinator took them over.  Nothing of
    the write was committed; the writer must let go of those runs."""

    def __init__(self, message: str, run_ids: Iterable[str]) -> None:
        super().__init__(message)
        self.run_ids = frozenset(run_ids)


class ObjectStoreError(BackendError):
    """The object store failed."""


class ObjectNotFoundError(ObjectStoreError):
    """An object referenced by a step input or output does not exist."""


class InputError(CodecError):
    """A step's call template or inputs cannot be decoded on the worker (not retried)."""


class ValueTooLargeError(CodecError):
    """A value is larger than ``Settings.max_value_size`` (a step's output), or a message
    would be larger than the message cap even with its values in the object store (not
    retried: the same step would produce the same value)."""


class StepTimeoutError(AexecError):
    """A step ran longer than its timeout."""


class UnknownStepError(AexecError):
    """A worker was sent a step name it does not serve (not retried): the worker was
    started without the module that defines it, or the plan names a remote step no
    worker implements."""


class WorkerLostError(AexecError):
    """The worker running a step stopped heartbeating; the attempt runs again elsewhere,
    and the step fails once its workers have vanished too often."""


class RunFailedError(AexecError):
    """A run ended without succeeding.

    ``errors`` maps each failed step key to its :class:`~aexec.types.ErrorInfo`.
    """

    def __init__(
        self, run_id: str, status: str, errors: Mapping[str, ErrorInfo], message: str | None = None
    ) -> None:
        self.run_id = run_id
        self.status = status
        self.errors = dict(errors)
        if message is None:
            parts = [f"{key}: {err.type}: {err.message}" for key, err in self.errors.items()]
            message = f"run {run_id} {status}" + (" (" + "; ".join(parts) + ")" if parts else "")
        super().__init__(message)


RunFailed = RunFailedError
"""The first name of :class:`RunFailedError`, kept so that ``except aexec.RunFailed`` works."""
