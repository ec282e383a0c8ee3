"""A process pool for CPU-bound sync steps (``aexec worker start --pool process``).

Nothing is pickled but strings and bytes: each child process loads the worker's modules
itself (by name or path) and finds steps by name; inputs and outputs cross as msgpack.
Inside a child, ``aexec.current()`` gives the run id, step key and attempt; progress
reports from a child are not forwarded.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from aexec import codec, context
from aexec.dsl import StepDef
from aexec.errors import CodecError, InputError, UnknownStepError
from aexec.types import ErrorInfo

# Per child process: the step table its initializer loaded.
_child_steps: dict[str, StepDef[Any, Any]] = {}


def _initialize(modules: Sequence[str]) -> None:
    from aexec.loader import find_steps, load_module_or_file

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
    (encoded output, None) or (None, error)."""
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
    ctx = context.StepContext(run_id, key, attempt, name)
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
    ``max_value_size`` bytes each."""

    def __init__(
        self, modules: Sequence[str], size: int, *, max_value_size: int = codec.DEFAULT_MAX_BODY
    ) -> None:
        self._max_value_size = max_value_size
        self._executor = ProcessPoolExecutor(
            max_workers=size,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_initialize,
            initargs=(list(modules),),
        )

    async def run(
        self, name: str, call: bytes, inputs: Sequence[bytes], run_id: str, key: str, attempt: int
    ) -> tuple[bytes | None, ErrorInfo | None]:
        loop = asyncio.get_running_loop()
        output, error = await loop.run_in_executor(
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
        return output, None if error is None else ErrorInfo.from_wire(error)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
