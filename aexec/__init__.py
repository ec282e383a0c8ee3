"""aexec: an asyncio-native distributed pipeline executor.

Define steps and pipelines with :func:`step`, :func:`pipeline` and :func:`remote_step`;
run them with ``python -m aexec run FILE`` or, from async code, with :class:`Executor`,
which hands out a :class:`Run` per submitted pipeline.  :mod:`aexec.testing` runs
pipelines in memory for tests.

``import aexec`` stays light: :class:`Executor` and :class:`Run` bring in the engine, so
they are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aexec.config import Settings
from aexec.context import StepContext, current
from aexec.directives import again, skip
from aexec.dsl import CompiledPipeline, Pipeline, StepDef, pipeline, remote_step, step
from aexec.errors import (
    AexecError,
    BackendError,
    CodecError,
    ConfigError,
    DefinitionError,
    InputError,
    LoadError,
    ObjectNotFoundError,
    ObjectStoreError,
    ParameterError,
    PlanError,
    RunFailed,
    RunFailedError,
    StepTimeoutError,
    StoreError,
    StoreUnavailableError,
    TransportError,
    UnknownStepError,
    WorkerLostError,
)
from aexec.events import Event, EventKind
from aexec.store import RunRecord, StepRecord
from aexec.types import ErrorInfo, RunStatus, StepStatus

if TYPE_CHECKING:
    from aexec.executor import Executor
    from aexec.run import Run

__version__ = "0.1.0.dev0"

__all__ = [
    "AexecError",
    "BackendError",
    "CodecError",
    "CompiledPipeline",
    "ConfigError",
    "DefinitionError",
    "ErrorInfo",
    "Event",
    "EventKind",
    "Executor",
    "InputError",
    "LoadError",
    "ObjectNotFoundError",
    "ObjectStoreError",
    "ParameterError",
    "Pipeline",
    "PlanError",
    "Run",
    "RunFailed",
    "RunFailedError",
    "RunRecord",
    "RunStatus",
    "Settings",
    "StepContext",
    "StepDef",
    "StepRecord",
    "StepStatus",
    "StepTimeoutError",
    "StoreError",
    "StoreUnavailableError",
    "TransportError",
    "UnknownStepError",
    "WorkerLostError",
    "again",
    "current",
    "pipeline",
    "remote_step",
    "skip",
    "step",
]


def __getattr__(name: str) -> Any:
    # The executor and the run types pull in the engine (and asyncio): importing them
    # lazily keeps `import aexec` light for the CLI's --help and for pipeline files.
    if name == "Executor":
        from aexec.executor import Executor

        return Executor
    if name == "Run":
        from aexec.run import Run

        return Run
    raise AttributeError(f"module 'aexec' has no attribute {name!r}")
