"""The definition API: ``@step``, ``@pipeline``, ``remote_step``, output handles.

A pipeline body runs once, at compile time, with the parameter values bound.  Calling a
step inside it records a node and returns an :class:`Output` handle; passing handles to
other steps makes edges.  Outside a pipeline, calling a step calls its function directly
(handy in unit tests).
"""

from __future__ import annotations

import contextvars
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from aexec import codec
from aexec.errors import AexecError, CodecError, DefinitionError, ParameterError, PlanError
from aexec.limits import Rate, StepLimits, key_text
from aexec.plan import CHILD, DEFAULT_QUEUE, NATIVE, Plan, StepSpec, build, make_spec
from aexec.retry import RetryPolicy
from aexec.wire import MAX_PRIORITY, check_version

if TYPE_CHECKING:
    from aexec.canvas import Signature

P = ParamSpec("P")
R = TypeVar("R")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_BUILDER: contextvars.ContextVar[_Builder] = contextvars.ContextVar("aexec_pipeline_builder")


def _user_frame() -> FrameType | None:
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
    return frame


def _where() -> str:
    frame = _user_frame()
    if frame is None:
        return "<unknown>"
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _raise_site(exc: BaseException, default: str) -> str:
    """``file:line`` of the innermost user frame in ``exc``'s traceback."""
    site = default
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not filename.startswith(_PACKAGE_DIR):
            site = f"{filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return site


def _definition_error(message: str, where: str | None = None) -> DefinitionError:
    return DefinitionError(f"{where or _where()}: {message}")


class StepDef(Generic[P, R]):
    """A step definition: a function plus its execution options.

    ``remote_step`` makes one without a function; its code lives in another code base.
    ``kind`` says who runs it (aexec workers, or a gateway such as Celery's, with
    ``task_options``).
    """

    def __init__(
        self,
        fn: Callable[P, R] | None,
        *,
        name: str,
        queue: str = DEFAULT_QUEUE,
        priority: int = 0,
        retry: RetryPolicy = RetryPolicy(),
        timeout: float | None = None,
        where: str = "<unknown>",
        accept_missing: bool = False,
        cache: bool | Callable[..., Any] = False,
        cache_ttl: float | None = None,
        max_wait: float | None = None,
        kind: str = NATIVE,
        task_options: tuple[tuple[str, Any], ...] = (),
        version: str | None = None,
        limits: StepLimits | None = None,
        when: Output | StepDef[..., Any] | None = None,
    ) -> None:
        self.fn = fn
        self.when = when
        self.max_wait = max_wait
        self.accept_missing = accept_missing
        self.cache = cache
        self.version = version
        self.cache_ttl = cache_ttl
        self.kind = kind
        self.task_options = task_options
        self.limits = limits  # its key (if it has one) is resolved per call
        self.name = name
        self.queue = queue
        self.priority = priority
        self.retry = retry
        self.timeout = None if timeout is None else float(timeout)
        self.where = where
        self.is_async = fn is not None and inspect.iscoroutinefunction(fn)
        self._signature: inspect.Signature | None = None
        # Call shapes (positional count, keyword names) its signature accepted: binding
        # depends on nothing else, and a pipeline calls a step in one shape thousands of times.
        self._shapes: set[tuple[int, tuple[str, ...]]] = set()
        self.__wrapped__ = fn
        self.__doc__ = getattr(fn, "__doc__", None)

    @property
    def is_remote(self) -> bool:
        return self.fn is None

    def alias(self, key: str) -> Callable[..., Any]:
        """Return a callable that adds this step to the pipeline under ``key``."""
        if not isinstance(key, str) or not key:
            raise _definition_error(f"alias of step {self.name!r} must be a non-empty string")

        def call(*args: Any, **kwargs: Any) -> Any:
            builder = _BUILDER.get(None)
            if builder is None:
                raise _definition_error(
                    f"step {self.name!r} alias {key!r} can only be called inside a @pipeline"
                )
            return builder.add(self, key, args, kwargs)

        return call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        builder = _BUILDER.get(None)
        if builder is not None:
            return builder.add(self, None, args, kwargs)
        if self.fn is None:
            raise _definition_error(
                f"remote step {self.name!r} can only be called inside a @pipeline"
            )
        for value in (*args, *kwargs.values()):
            if _holds_output(value):
                raise _definition_error(
                    f"an output handle was passed to step {self.name!r} outside its pipeline"
                )
        return self.fn(*args, **kwargs)

    def map(self, items: Any, *args: Any, map_key: str | None = None, **kwargs: Any) -> Any:
        """Inside a pipeline body: run this step once per item of the list ``items`` (the
        output of a step), known at run time; each takes its item as its first argument,
        then ``args`` and ``kwargs``.  The steps are keyed ``name[0]``, ``name[1]``, ...,
        or, with ``map_key="field"`` and items that are dicts, by that field of each item
        (``name[alice]``).  The handle returned is the list of their outputs, in order
        (to pass on whole, or to map over again)."""
        if map_key is not None and (not isinstance(map_key, str) or not map_key):
            raise _definition_error(f"{self.name}.map(map_key=): the name of a field")
        builder = _BUILDER.get(None)
        if builder is None:
            raise _definition_error(f"{self.name}.map() can only be called inside a @pipeline")
        if not isinstance(items, Output):
            raise _definition_error(
                f"{self.name}.map() takes the output of a step (a list known at run time), "
                f"not {type(items).__name__}: for a list known now, call the step in a loop"
            )
        return builder.add(self, None, (items, *args), kwargs, map_over=items, map_key=map_key)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A Celery-style signature of this step for :mod:`aexec.canvas`: in a chain, the
        previous result goes first, before ``args``."""
        from aexec.canvas import Signature

        return Signature(self, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: in a chain it runs after the previous task, without
        taking its result."""
        from aexec.canvas import Signature

        return Signature(self, args, kwargs, immutable=True)

    def __repr__(self) -> str:
        kind = self.kind or ("remote_step" if self.fn is None else "step")
        return f"<{kind} {self.name!r} queue={self.queue!r}>"


def _check_options(
    name: str, queue: str, priority: int, retries: int, backoff: float, timeout: float | None
) -> None:
    if not isinstance(name, str) or not name:
        raise _definition_error(f"step name must be a non-empty string, not {name!r}")
    if not isinstance(queue, str) or not queue:
        raise _definition_error(f"step {name!r}: queue must be a non-empty string")
    if (
        not isinstance(priority, int)
        or isinstance(priority, bool)
        or not 0 <= priority <= MAX_PRIORITY
    ):
        raise _definition_error(f"step {name!r}: priority must be an integer 0..{MAX_PRIORITY}")
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise _definition_error(f"step {name!r}: retries must be a non-negative integer")
    if not isinstance(backoff, int | float) or isinstance(backoff, bool) or backoff < 0:
        raise _definition_error(f"step {name!r}: retry_backoff must be a non-negative number")
    if timeout is not None and (
        not isinstance(timeout, int | float) or isinstance(timeout, bool) or not timeout > 0
    ):
        raise _definition_error(f"step {name!r}: timeout must be a positive number of seconds")


def _flag(name: str, option: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _definition_error(f"step {name!r}: {option} must be True or False")
    return value


def _cache_options(name: str, cache: Any, ttl: Any) -> dict[str, Any]:
    if not (isinstance(cache, bool) or callable(cache)):
        raise _definition_error(f"step {name!r}: cache must be True, False or a key function")
    if ttl is not None and (
        not isinstance(ttl, int | float) or isinstance(ttl, bool) or not ttl > 0
    ):
        raise _definition_error(f"step {name!r}: cache_ttl must be a positive number of seconds")
    return {"cache": cache, "cache_ttl": None if ttl is None else float(ttl)}


def _max_wait(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise _definition_error(f"step {name!r}: max_wait must be a positive number of seconds")
    return float(value)


def _retry_policy(
    name: str, retries: int, backoff: float, backoff_max: float, jitter: bool = True
) -> RetryPolicy:
    try:
        policy = RetryPolicy(retries, backoff, backoff_max, jitter)
    except PlanError as exc:
        raise _definition_error(f"step {name!r}: {exc}") from None
    return RetryPolicy(policy.retries, float(policy.backoff), float(policy.backoff_max), jitter)


@overload
def step(fn: Callable[P, R], /) -> StepDef[P, R]: ...


@overload
def step(
    *,
    name: str | None = None,
    queue: str = DEFAULT_QUEUE,
    priority: int = 0,
    retries: int = 0,
    retry_backoff: float = 1.0,
    retry_backoff_max: float = 60.0,
    retry_jitter: bool = True,
    timeout: float | None = None,
    accept_missing: bool = False,
    version: str | None = None,
    cache: bool | Callable[..., Any] = False,
    cache_ttl: float | None = None,
    max_wait: float | None = None,
    concurrency: int | None = None,
    uses: str | tuple[str, ...] = (),
    rate_limit: str | None = None,
    limit_key: str | None = None,
    when: Output | StepDef[..., Any] | None = None,
) -> Callable[[Callable[P, R]], StepDef[P, R]]: ...


def step(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    queue: str = DEFAULT_QUEUE,
    priority: int = 0,
    retries: int = 0,
    retry_backoff: float = 1.0,
    retry_backoff_max: float = 60.0,
    retry_jitter: bool = True,
    timeout: float | None = None,
    accept_missing: bool = False,
    version: str | None = None,
    cache: bool | Callable[..., Any] = False,
    cache_ttl: float | None = None,
    max_wait: float | None = None,
    concurrency: int | None = None,
    uses: str | tuple[str, ...] = (),
    rate_limit: str | None = None,
    limit_key: str | None = None,
    when: Output | StepDef[..., Any] | None = None,
) -> StepDef[P, R] | Callable[[Callable[P, R]], StepDef[P, R]]:
    """Declare a step: ``@step`` or ``@step(queue=..., priority=..., retries=..., timeout=...)``.

    ``retries`` counts retries after the first attempt; the wait before retry ``n`` is
    ``retry_backoff · 2^(n-1)`` seconds (capped at ``retry_backoff_max``) with jitter.
    ``accept_missing``: the step runs even when some of its inputs were skipped
    (:func:`aexec.skip`), taking None in their place (join semantics); otherwise a skipped
    input skips it too.  ``version``: this code is that version of the step ``name``; a
    pipeline that asks for a version runs only on workers serving it.
    ``cache=True`` reuses the output of an earlier successful attempt of this step with
    the same ``version`` and inputs (or the same value of a key function: ``cache=fn``
    called with the step's arguments), for ``cache_ttl`` seconds or for good
    (:mod:`aexec.cache`); bump ``version`` when the code changes.
    ``max_wait``: how long, in seconds from its first :func:`aexec.again`, the step may
    keep asking to run again before it fails.
    ``when``: the step runs only if a boolean output is true, else it is skipped (and its
    dependents, as for :func:`aexec.skip`): an output handle (a step decorated in a
    pipeline body), or a step, meaning that step's output where the same pipeline (or
    sub-pipeline) body called it (once, before this step).  ``when=<handle>`` at a call
    sets it for that call only.

    Limits (held by the coordinator, see :mod:`aexec.limits`): ``concurrency`` caps the
    step's running attempts across all runs (per ``limit_key`` value if given), ``uses``
    takes a slot of each named limit of the configuration's ``limits:``, ``rate_limit``
    (``"10/s"``, ``"100/m"``, ``"1000/h"``) caps how often it starts, and ``limit_key``
    names the step argument (or else pipeline parameter) whose value keys the limit and
    whose waiting steps are served round-robin.
    """
    where = _where()

    def decorate(func: Callable[P, R]) -> StepDef[P, R]:
        if not callable(func):
            raise _definition_error(f"@step expects a function, not {func!r}", where)
        step_name = name if name is not None else getattr(func, "__name__", "")
        _check_options(step_name, queue, priority, retries, retry_backoff, timeout)
        return StepDef(
            func,
            name=step_name,
            queue=queue,
            priority=priority,
            retry=_retry_policy(step_name, retries, retry_backoff, retry_backoff_max, retry_jitter),
            timeout=timeout,
            where=where,
            accept_missing=_flag(step_name, "accept_missing", accept_missing),
            version=_version(step_name, version, where),
            **_cache_options(step_name, cache, cache_ttl),
            max_wait=_max_wait(step_name, max_wait),
            limits=_step_limits(step_name, concurrency, uses, rate_limit, limit_key, where),
            when=_condition(step_name, when, where),
        )

    if fn is not None:
        return decorate(fn)
    return decorate


def _condition(name: str, when: Any, where: str) -> Output | StepDef[..., Any] | None:
    if when is None or isinstance(when, Output | StepDef):
        return when
    raise _definition_error(
        f"step {name!r}: when= must be an output handle or a step (whose boolean output "
        f"decides), not {type(when).__name__}",
        where,
    )


def remote_step(
    name: str,
    *,
    queue: str = DEFAULT_QUEUE,
    priority: int = 0,
    retries: int = 0,
    retry_backoff: float = 1.0,
    retry_backoff_max: float = 60.0,
    timeout: float | None = None,
    version: str | None = None,
    concurrency: int | None = None,
    uses: str | tuple[str, ...] = (),
    rate_limit: str | None = None,
    limit_key: str | None = None,
) -> StepDef[..., Any]:
    """Declare a step whose code lives elsewhere: a worker serving ``name`` on ``queue`` runs
    it; with ``version``, only a worker serving that version of it (``@step(name=...,
    version=...)``), so that versions serve side by side.  Limits as for :func:`step`."""
    where = _where()
    _check_options(name, queue, priority, retries, retry_backoff, timeout)
    return StepDef(
        None,
        name=name,
        queue=queue,
        priority=priority,
        retry=_retry_policy(name, retries, retry_backoff, retry_backoff_max),
        timeout=timeout,
        where=where,
        version=_version(name, version, where),
        limits=_step_limits(name, concurrency, uses, rate_limit, limit_key, where),
    )


def _version(name: str, version: object, where: str) -> str | None:
    try:
        return check_version(version)
    except CodecError as exc:
        raise _definition_error(f"step {name!r}: {exc}", where) from None


def _step_limits(
    name: str,
    concurrency: int | None,
    uses: str | tuple[str, ...],
    rate_limit: str | None,
    limit_key: str | None,
    where: str,
) -> StepLimits | None:
    """The limits a step declares (its key still unresolved), or None without any."""
    names = (uses,) if isinstance(uses, str) else tuple(uses)
    if concurrency is None and not names and rate_limit is None:
        if limit_key is not None:
            raise _definition_error(
                f"step {name!r}: limit_key needs a limit (concurrency=, uses= or rate_limit=)",
                where,
            )
        return None
    if limit_key is not None and (not isinstance(limit_key, str) or not limit_key):
        raise _definition_error(f"step {name!r}: limit_key must name an argument", where)
    try:
        limits = StepLimits(
            concurrency,
            names,
            None if rate_limit is None else Rate.parse(rate_limit),
            limit_key,
        )
        limits.check()
    except PlanError as exc:
        raise _definition_error(f"step {name!r}: {exc}", where) from None
    return limits


class Output:
    """A handle to a step's output while a pipeline body runs; its value exists at run time."""

    __slots__ = ("_builder", "key")

    def __init__(self, builder: _Builder, key: str) -> None:
        self._builder = builder
        self.key = key

    def _misuse(self, what: str) -> DefinitionError:
        return _definition_error(
            f"the output of step {self.key!r} is only known at run time; {what} "
            "is not possible in a pipeline body — pass the handle to a step instead"
        )

    def __bool__(self) -> bool:
        raise self._misuse("testing its truth")

    def __iter__(self) -> Any:
        raise self._misuse("iterating over it")

    def __getitem__(self, item: Any) -> Any:
        raise self._misuse("indexing it")

    def __repr__(self) -> str:
        return f"<output of step {self.key!r}>"


def _runtime(value: Any) -> bool:
    """``value`` holds an output handle or a child run's input: known only at run time."""
    if isinstance(value, Output | codec.Param):
        return True
    if isinstance(value, list | tuple):
        return any(_runtime(v) for v in value)
    if isinstance(value, dict):
        return any(_runtime(v) for v in value.values())
    return False


def _holds_output(value: Any) -> bool:
    if isinstance(value, Output):
        return True
    if isinstance(value, list | tuple):
        return any(_holds_output(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_output(v) for v in value.values())
    return False


@dataclass(slots=True)
class _Builder:
    pipeline: str
    nodes: list[StepSpec] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    counters: dict[str, int] = field(default_factory=dict)
    steps: dict[str, StepDef[Any, Any]] = field(default_factory=dict)
    prefix: str = ""  # of the keys of the sub-pipeline being inlined ("child.")
    prefixes: set[str] = field(default_factory=set)  # sub-pipelines inlined, by key
    params: dict[str, Any] = field(default_factory=dict)  # the pipeline's, bound
    calls: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (prefix, name)

    def _key_for(self, step: StepDef[Any, Any], alias: str | None) -> str:
        if alias is not None:
            key = self.prefix + alias
            if key in self.keys:
                raise _definition_error(f"duplicate step key {key!r} in pipeline {self.pipeline!r}")
            return key
        return self._fresh(self.prefix + step.name)

    def _fresh(self, base: str) -> str:
        """``base``, or ``base_2``, ``base_3``, ... the first not taken."""
        n = self.counters.get(base, 0)
        key = base if n == 0 else f"{base}_{n + 1}"
        while key in self.keys or key in self.prefixes:
            n += 1
            key = f"{base}_{n + 1}"
        self.counters[base] = n + 1
        return key

    def inline(self, child: Pipeline, alias: str | None, args: Any, kwargs: Any) -> Any:
        """Add the steps of pipeline ``child`` under the key prefix ``<name>.`` (its alias,
        or its name numbered as steps are: ``child``, ``child_2``, ...); return its result."""
        if alias is not None:
            name = self.prefix + alias
            if name in self.prefixes:
                raise _definition_error(
                    f"duplicate sub-pipeline key {name!r} in pipeline {self.pipeline!r}"
                )
        else:
            name = self._fresh(self.prefix + child.name)
        self.prefixes.add(name)
        outer, self.prefix = self.prefix, name + "."
        try:
            return child.fn(*args, **kwargs)
        finally:
            self.prefix = outer

    def add(
        self,
        step: StepDef[Any, Any],
        alias: str | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        after: Sequence[Output] = (),
        map_over: Output | None = None,
        map_key: str | None = None,
    ) -> Output:
        """Add a step; it takes the outputs in its arguments, and runs after ``after`` too
        (dependencies without data: a Celery immutable signature in a chain)."""
        self._register(step)
        key = self._key_for(step, alias)
        when: Any = None
        if "when" in kwargs:  # the condition, never an argument of the function
            when = kwargs["when"]
            kwargs = {k: v for k, v in kwargs.items() if k != "when"}
        elif step.when is not None:
            when = self._declared_condition(step, key)
        if when is not None and not isinstance(when, Output):
            raise _definition_error(
                f"when= of step {key!r} must be the output of a step (its boolean result)"
            )
        if step.fn is not None:
            _check_signature(step, args, kwargs)
        deps: dict[str, int] = {}
        template = [
            [self._template(a, deps, key) for a in args],
            {k: self._template(v, deps, key) for k, v in kwargs.items()},
        ]
        for before in after:
            self._template(before, deps, key)
        if when is not None:
            self._template(when, deps, key)
        try:
            call = codec.encode(template)
        except CodecError:
            raise _definition_error(_unencodable(step.name, args, kwargs)) from None
        limits = step.limits
        if limits is not None and limits.key_name is not None:
            limits = self._keyed(step, limits, args, kwargs, deps)
        self.keys.add(key)
        self.calls.setdefault((self.prefix, step.name), []).append(key)
        self.nodes.append(
            make_spec(  # StepSpec(...), every field in order
                key,
                step.name,
                step.queue,
                step.priority,
                step.retry,
                step.timeout,
                tuple(deps),
                call,
                None if when is None else when.key,
                step.accept_missing,
                None if map_over is None else map_over.key,
                step.max_wait,
                map_key,
                step.kind,
                step.task_options,
                step.version,
                limits,
            )
        )
        return Output(self, key)

    def _register(self, step: StepDef[Any, Any]) -> None:
        known = self.steps.get(step.name)
        if known is None:
            self.steps[step.name] = step
        elif known is not step and known.fn is not step.fn:
            raise _definition_error(
                f"two different steps are named {step.name!r} "
                f"(defined at {known.where} and {step.where}); give one a name= option"
            )

    def child(self, child: Pipeline, alias: str | None, values: dict[str, Any]) -> Output:
        """Add one step that runs pipeline ``child`` as a run of its own, a child of this
        one, with the arguments ``values`` (by parameter name); return its result.

        The child is compiled now: arguments known now are its parameters; those that hold
        output handles are its *inputs*, placeholders in its plan (:class:`codec.Param`)
        filled with their values when the child run is created, and this step's inputs."""
        if alias is not None:
            key = self.prefix + alias
            if key in self.keys or key in self.prefixes:
                raise _definition_error(f"duplicate step key {key!r} in pipeline {self.pipeline!r}")
        else:
            key = self._fresh(self.prefix + child.name)
        inputs = {name: v for name, v in values.items() if _runtime(v)}
        constants = {name: v for name, v in values.items() if name not in inputs}
        compiled = child.compile_child(constants, tuple(inputs))
        for step in compiled.steps.values():
            self._register(step)
        deps: dict[str, int] = {}
        template = [[], {name: self._template(v, deps, key) for name, v in inputs.items()}]
        self.keys.add(key)
        self.nodes.append(
            StepSpec(
                key,
                child.name,
                deps=tuple(deps),
                call=codec.encode(template),
                kind=CHILD,
                task_options=(("inputs", list(inputs)), ("plan", compiled.plan.to_bytes())),
            )
        )
        return Output(self, key)

    def _declared_condition(self, step: StepDef[Any, Any], key: str) -> Output:
        """The output that ``@step(when=...)`` of ``step`` names for its call ``key``."""
        when = step.when
        if isinstance(when, Output):
            return when
        assert when is not None
        called = self.calls.get((self.prefix, when.name), [])
        scope = (
            f"sub-pipeline {self.prefix[:-1]!r}" if self.prefix else f"pipeline {self.pipeline!r}"
        )
        if len(called) != 1:
            how = "never" if not called else f"{len(called)} times"
            raise _definition_error(
                f"step {key!r} runs when step {when.name!r} is true, but {scope} calls "
                f"{when.name!r} {how} before it: call it once before, or pass "
                f"when=<its output> where you call {step.name!r}"
            )
        return Output(self, called[0])

    def _keyed(
        self,
        step: StepDef[Any, Any],
        limits: StepLimits,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        deps: dict[str, int],
    ) -> StepLimits:
        """``limits`` with the limit key of this call: the step argument ``limit_key``
        names (a constant, or the output of an upstream step), else the pipeline parameter."""
        name = limits.key_name
        assert name is not None
        value: Any = inspect.Parameter.empty
        if name in kwargs:
            value = kwargs[name]
        elif step.fn is not None and step._signature is not None:
            try:
                bound = step._signature.bind(*args, **kwargs)
            except TypeError:
                bound = None
            if bound is not None and name in bound.arguments:
                value = bound.arguments[name]
        if value is inspect.Parameter.empty:
            if name not in self.params:
                raise _definition_error(
                    f"step {step.name!r}: limit_key {name!r} is neither an argument of this "
                    f"call nor a parameter of pipeline {self.pipeline!r}"
                )
            value = self.params[name]
        if isinstance(value, Output):
            return replace(limits, key_input=deps[value.key])
        if _holds_output(value):
            raise _definition_error(
                f"step {step.name!r}: limit_key {name!r} must be a value or one step's output"
            )
        return replace(limits, key=key_text(value))

    def _template(self, value: Any, deps: dict[str, int], key: str) -> Any:
        if isinstance(value, Output):
            if value._builder is not self:
                raise _definition_error(
                    f"the output of step {value.key!r} belongs to another pipeline "
                    f"and cannot be passed to {key!r}"
                )
            slot = deps.get(value.key)
            if slot is None:
                slot = deps[value.key] = len(deps)
            return codec.slot(slot)
        if isinstance(value, list | tuple):
            return [self._template(v, deps, key) for v in value]
        if isinstance(value, dict):
            return {k: self._template(v, deps, key) for k, v in value.items()}
        return value


def _check_signature(
    step: StepDef[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    signature = step._signature
    if signature is None:
        try:
            signature = step._signature = inspect.signature(step.fn)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return
    shape = (len(args), tuple(kwargs))
    if shape in step._shapes:
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise _definition_error(f"step {step.name!r} called with bad arguments: {exc}") from None
    step._shapes.add(shape)


def _unencodable(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    labelled = [(f"argument {i + 1}", a) for i, a in enumerate(args)]
    labelled += [(f"argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in labelled:
        try:
            codec.check_encodable(_strip_outputs(value))
        except CodecError as exc:
            return f"{label} of step {name!r} cannot be encoded: {exc}"
    return f"an argument of step {name!r} cannot be encoded"


def _strip_outputs(value: Any) -> Any:
    if isinstance(value, Output):
        return None
    if isinstance(value, list | tuple):
        return [_strip_outputs(v) for v in value]
    if isinstance(value, dict):
        return {k: _strip_outputs(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, slots=True)
class Parameter:
    name: str
    default: Any = inspect.Parameter.empty
    annotation: Any = inspect.Parameter.empty

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


_CHECKED_TYPES: tuple[type, ...] = (int, float, str, bool, bytes, list, dict)


def _check_type(pipeline: str, param: Parameter, value: Any) -> Any:
    expected = param.annotation
    if expected not in _CHECKED_TYPES or isinstance(value, codec.Param):
        return value  # a child run's input: its value is known when the run is created
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = False if expected is int and isinstance(value, bool) else isinstance(value, expected)
    if not ok:
        raise ParameterError(
            f"parameter {param.name!r} of pipeline {pipeline!r} expects {expected.__name__}, "
            f"got {type(value).__name__} {value!r:.60}"
        )
    return value


@dataclass(frozen=True, slots=True)
class CompiledPipeline:
    """A plan plus the step definitions (with their code, where it is local) it uses."""

    plan: Plan
    steps: dict[str, StepDef[Any, Any]]


class Pipeline:
    """A pipeline definition; see :func:`pipeline`."""

    def __init__(self, fn: Callable[..., Any], *, name: str, where: str) -> None:
        self.fn = fn
        self.name = name
        self.where = where
        self.__doc__ = fn.__doc__
        try:
            signature = inspect.signature(fn, eval_str=True)
        except Exception:
            signature = inspect.signature(fn)
        params = []
        for p in signature.parameters.values():
            if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                raise _definition_error(
                    f"pipeline {name!r} cannot take *args or **kwargs; name its parameters", where
                )
            if p.default is not inspect.Parameter.empty:
                try:
                    codec.check_encodable(p.default)
                except CodecError as exc:
                    raise _definition_error(
                        f"default of parameter {p.name!r} of pipeline {name!r} "
                        f"cannot be encoded: {exc}",
                        where,
                    ) from None
            params.append(Parameter(p.name, p.default, p.annotation))
        self.parameters: tuple[Parameter, ...] = tuple(params)

    def bind(self, params: dict[str, Any]) -> dict[str, Any]:
        """Validate ``params`` against the signature; fill in defaults."""
        known = {p.name: p for p in self.parameters}
        unknown = sorted(set(params) - set(known))
        if unknown:
            names = ", ".join(known) or "none"
            raise ParameterError(
                f"unknown parameter {unknown[0]!r} for pipeline {self.name!r} (parameters: {names})"
            )
        bound: dict[str, Any] = {}
        for p in self.parameters:
            if p.name in params:
                bound[p.name] = _check_type(self.name, p, params[p.name])
            elif p.required:
                raise ParameterError(f"missing parameter {p.name!r} for pipeline {self.name!r}")
            else:
                bound[p.name] = p.default
        try:
            codec.check_encodable(bound)
        except CodecError as exc:
            raise ParameterError(
                f"parameters of pipeline {self.name!r} cannot be encoded: {exc}"
            ) from None
        return bound

    def compile(self, **params: Any) -> CompiledPipeline:
        """Run the body once with ``params`` and compile the resulting DAG into a plan."""
        return self._compile(self.bind(params))

    def compile_child(self, constants: dict[str, Any], inputs: tuple[str, ...]) -> CompiledPipeline:
        """Compile this pipeline as a child run's: ``constants`` are parameter values,
        ``inputs`` the parameters whose values come at run time (placeholders here)."""
        return self._compile(self.bind({**constants, **{n: codec.Param(n) for n in inputs}}))

    def _compile(self, bound: dict[str, Any]) -> CompiledPipeline:
        builder = _Builder(self.name, params=bound)
        token = _BUILDER.set(builder)
        try:
            returned = self.fn(**bound)
        except AexecError:
            raise
        except Exception as exc:
            raise DefinitionError(
                f"{_raise_site(exc, self.where)}: pipeline {self.name!r} raised while "
                f"compiling: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            _BUILDER.reset(token)
        result_deps: dict[str, int] = {}
        result_template = builder._template(returned, result_deps, "the pipeline result")
        try:
            result = codec.encode(result_template)
        except CodecError as exc:
            raise _definition_error(
                f"result of pipeline {self.name!r} cannot be encoded: {exc}", self.where
            ) from None
        try:
            plan = build(
                self.name,
                builder.nodes,
                result_keys=tuple(result_deps),
                result=result,
                params=codec.encode(bound),
            )
        except PlanError as exc:
            raise _definition_error(str(exc), self.where) from exc
        return CompiledPipeline(plan, dict(builder.steps))

    def __call__(self, *args: Any, run_as_child: bool = False, **kwargs: Any) -> Any:
        """Inside another pipeline body, inline this pipeline's steps under the key prefix
        ``<name>.`` and return its result; elsewhere, an error.  With ``run_as_child=True``,
        one step ``<name>`` runs it instead as a child run (its own run, with its own
        retries and cancellation, linked to this one) and succeeds with its result."""
        return self._inline(None, args, kwargs, run_as_child)

    def alias(self, key: str) -> Callable[..., Any]:
        """Return a callable that inlines this pipeline under the key prefix ``key.`` (or,
        with ``run_as_child=True``, runs it as a child run from the step ``key``)."""
        if not isinstance(key, str) or not key:
            raise _definition_error(f"alias of pipeline {self.name!r} must be a non-empty string")

        def call(*args: Any, run_as_child: bool = False, **kwargs: Any) -> Any:
            return self._inline(key, args, kwargs, run_as_child)

        return call

    def _inline(
        self,
        alias: str | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        run_as_child: bool = False,
    ) -> Any:
        builder = _BUILDER.get(None)
        if builder is None:
            raise _definition_error(
                f"pipeline {self.name!r} is not called directly: submit it to an Executor "
                "or run it with `aexec run`"
            )
        if not isinstance(run_as_child, bool):
            raise _definition_error(f"pipeline {self.name!r}: run_as_child must be True or False")
        try:
            bound = inspect.signature(self.fn).bind(*args, **kwargs)
        except TypeError as exc:
            raise _definition_error(
                f"pipeline {self.name!r} called with bad arguments: {exc}"
            ) from None
        if run_as_child:
            return builder.child(self, alias, dict(bound.arguments))
        return builder.inline(self, alias, args, kwargs)

    def __repr__(self) -> str:
        return f"<pipeline {self.name!r}>"


@overload
def pipeline(fn: Callable[..., Any], /) -> Pipeline: ...


@overload
def pipeline(*, name: str | None = None) -> Callable[[Callable[..., Any]], Pipeline]: ...


def pipeline(
    fn: Callable[..., Any] | None = None, /, *, name: str | None = None
) -> Pipeline | Callable[[Callable[..., Any]], Pipeline]:
    """Declare a pipeline: its body wires steps together; its parameters have defaults or not."""
    where = _where()

    def decorate(func: Callable[..., Any]) -> Pipeline:
        pipeline_name = name if name is not None else getattr(func, "__name__", "")
        if not isinstance(pipeline_name, str) or not pipeline_name:
            raise _definition_error("pipeline name must be a non-empty string", where)
        return Pipeline(func, name=pipeline_name, where=where)

    if fn is not None:
        return decorate(fn)
    return decorate
