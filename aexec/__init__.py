"""aexec: an asyncio-native distributed pipeline executor.

Define steps and pipelines with :func:`step`, :func:`pipeline` and :func:`remote_step`;
run them with ``python -m aexec run FILE`` or, from async code, with :class:`Executor`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aexec.context import StepContext, current
from aexec.dsl import CompiledPipeline, Pipeline, StepDef, pipeline, remote_step, step
from aexec.errors import (
    AexecError,
    BackendError,
    CodecError,
    ConfigError,
    DefinitionError,
    LoadError,
    ObjectNotFoundError,
    ObjectStoreError,
    ParameterError,
    PlanError,
    RunFailed,
    StepTimeoutError,
    StoreError,
    TransportError,
)
from aexec.types import ErrorInfo, RunStatus, StepStatus

if TYPE_CHECKING:
    from aexec.executor import Executor, Run

__version__ = "0.1.0.dev0"

__all__ = [
    "AexecError",
    "BackendError",
    "CodecError",
    "CompiledPipeline",
    "ConfigError",
    "DefinitionError",
    "ErrorInfo",
    "Executor",
    "LoadError",
    "ObjectNotFoundError",
    "ObjectStoreError",
    "ParameterError",
    "Pipeline",
    "PlanError",
    "Run",
    "RunFailed",
    "RunStatus",
    "StepContext",
    "StepDef",
    "StepStatus",
    "StepTimeoutError",
    "StoreError",
    "TransportError",
    "current",
    "pipeline",
    "remote_step",
    "step",
]


def __getattr__(name: str) -> Any:
    # The executor pulls in the engine; importing it lazily keeps `import aexec` light.
    if name in ("Executor", "Run"):
        from aexec import executor

        return getattr(executor, name)
    raise AttributeError(f"module 'aexec' has no attribute {name!r}")
