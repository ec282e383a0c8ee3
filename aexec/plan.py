"""Execution plans: frozen, validated, topologically ordered, msgpack-serialisable.

A plan is pure data.  Each step carries its key (unique in the plan), the name a worker
finds its code by, its queue, priority, retry policy, timeout, the keys of the steps whose
outputs it takes, and its *call template*: the encoded ``[args, kwargs]`` with
``Slot(i)`` where input ``i`` goes.  The pipeline result is a template of the same kind.
The plan's digest is the SHA-256 of its canonical encoding.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from aexec import codec
from aexec.errors import CodecError, PlanError
from aexec.limits import StepLimits
from aexec.retry import RetryPolicy
from aexec.wire import MAX_PRIORITY, check_version, versioned

PLAN_VERSION = 1
DEFAULT_QUEUE = "default"
T = TypeVar("T")
NATIVE = ""
"""The kind of step aexec workers run; other kinds go through a gateway (Celery)."""
CHILD = "child"
"""A sub-pipeline run as a child run (``run_as_child=True``): its task option ``plan`` is
the child's plan, ``inputs`` the parameters its call gives at run time."""

EMPTY_CALL = codec.encode([[], {}])
NULL_RESULT = codec.encode(None)


def _maker(cls: type[T]) -> Callable[..., T]:
    """A constructor of the frozen, slotted dataclass ``cls`` from all its fields, in
    declaration order: the instance ``cls(*values)`` is, built with each slot's own setter.
    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, twice
    the time, and compiling builds two of these a step (11,002 steps for the chain of
    chords).  Generated, as dataclasses generate ``__init__``."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    setters = {f"_set_{n}": getattr(cls, n).__set__ for n in names}
    body = "".join(f"    _set_{n}(obj, {n})\n" for n in names)
    source = f"def make({', '.join(names)}):\n    obj = _new(_cls)\n{body}    return obj\n"
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls, **setters}
    exec(source, scope)  # our own field names, as dataclasses does
    make: Callable[..., T] = scope["make"]
    return make


@dataclass(frozen=True, slots=True)
class StepSpec:
    """A step as a plan describes it; ``deps`` are step keys."""

    key: str
    name: str
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    retry: RetryPolicy = RetryPolicy()
    timeout: float | None = None
    deps: tuple[str, ...] = ()
    call: bytes = EMPTY_CALL
    when: str | None = None  # a dep whose output must be true for this step to run
    accept_missing: bool = False  # runs with None for skipped inputs (join semantics)
    map_over: str | None = None  # a dep whose list output this step is mapped over
    max_wait: float | None = None  # how long it may keep asking to run again (aexec.again)
    map_key: str | None = None  # a map: the field of each item (a dict) that keys its step
    kind: str = NATIVE  # who runs it: aexec workers (NATIVE) or a gateway (``"celery"``)
    task_options: tuple[tuple[str, Any], ...] = ()  # the gateway's options for it
    version: str | None = None  # only workers serving this version of ``name`` run it
    limits: StepLimits | None = None


@dataclass(frozen=True, slots=True)
class PlanStep:
    """A step in a compiled plan; ``deps`` and ``dependents`` are step indices."""

    index: int
    key: str
    name: str
    queue: str
    priority: int
    retry: RetryPolicy
    timeout: float | None
    deps: tuple[int, ...]
    dependents: tuple[int, ...]
    call: bytes
    when: int | None = None
    accept_missing: bool = False
    map_over: int | None = None  # a map: the dep whose list it runs over, one step per item
    element: int | None = None  # a step a map expanded into: the item it takes
    max_wait: float | None = None
    map_key: str | None = None

    @property
    def is_map(self) -> bool:
        """A map template: expanded at run time, then collecting its steps' outputs."""
        return self.map_over is not None and self.element is None

    kind: str = NATIVE
    task_options: tuple[tuple[str, Any], ...] = ()  # sorted by name
    version: str | None = None

    @property
    def route(self) -> str:
        """The step queue (name) its messages go to: its queue, at its version."""
        return versioned(self.queue, self.version)

    @property
    def address(self) -> str:
        """The name its messages carry: its name, at its version."""
        return versioned(self.name, self.version)

    limits: StepLimits | None = None  # None: no limit (the hot path checks just this)

    def options(self, steps: Sequence[PlanStep]) -> dict[str, Any]:
        """The step's dynamic options as the plan's wire form keeps them (only those set,
        so that the plans of pipelines that use none keep their digests)."""
        options: dict[str, Any] = {}
        if self.when is not None:
            options["when"] = steps[self.when].key
        if self.accept_missing:
            options["accept_missing"] = True
        if self.map_over is not None:
            options["map_over"] = steps[self.map_over].key
        if self.max_wait is not None:
            options["max_wait"] = self.max_wait
        if self.map_key is not None:
            options["map_key"] = self.map_key
        if self.kind != NATIVE:
            options["kind"] = self.kind
        if self.task_options:
            options["task_options"] = dict(self.task_options)
        if self.version is not None:
            options["version"] = self.version
        if self.limits is not None:
            options["limits"] = self.limits.to_wire()
        return options


make_spec: Callable[..., StepSpec] = _maker(StepSpec)
"""``StepSpec(*fields)``, every field given in order, built faster (:func:`_maker`)."""
_make_step: Callable[..., PlanStep] = _maker(PlanStep)


@dataclass(frozen=True)
class Plan:
    pipeline: str
    steps: tuple[PlanStep, ...]
    result_deps: tuple[int, ...] = ()
    result: bytes = NULL_RESULT
    params: bytes = field(default=codec.encode({}))
    digest: str = ""
    index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    expanded: frozenset[int] = field(default=frozenset(), compare=False, repr=False)  # maps
    # What to_bytes() returns, encoded once by build() for the digest (empty: encode again).
    encoded: bytes = field(default=b"", compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.steps)

    def step(self, key: str) -> PlanStep:
        try:
            return self.steps[self.index[key]]
        except KeyError:
            raise PlanError(f"unknown step {key!r} in pipeline {self.pipeline!r}") from None

    def declared(self, key: str) -> PlanStep | None:
        """The step of this plan that a run's step ``key`` stands for: itself, or for a step
        a map expanded into (``name[i]``, absent from the plan as stored), its map; None if
        the plan has neither."""
        found = self.index.get(key)
        if found is not None:
            return self.steps[found]
        if key.endswith("]"):
            for position, char in enumerate(key):
                if char == "[":
                    template = self.index.get(key[:position])
                    if template is not None and self.steps[template].is_map:
                        return self.steps[template]
        return None

    @property
    def parameters(self) -> dict[str, Any]:
        value = codec.decode(self.params)
        return value if isinstance(value, dict) else {}

    @property
    def queues(self) -> frozenset[str]:
        """The aexec step queues its native steps go to."""
        return frozenset(s.route for s in self.steps if s.kind == NATIVE)

    @property
    def kinds(self) -> frozenset[str]:
        """The kinds of step it holds besides native ones (``"celery"``)."""
        return frozenset(s.kind for s in self.steps if s.kind != NATIVE)

    def expand(self, index: int, count: int, labels: Sequence[str] | None = None) -> Plan:
        """This plan with map ``index`` expanded into ``count`` steps, appended after every
        step there is (the indices of the others do not change): ``key[0]``, ``key[1]``, ...
        (or ``key[label]`` with ``labels``) each taking one item of the list and the map's
        other inputs, and each an input of the map, which collects their outputs.  The
        digest stays the plan's (the plan stored is the one without expansions, which are
        recorded as events)."""
        template = self.steps[index]
        if not template.is_map or count < 0 or (labels is not None and len(labels) != count):
            raise PlanError(f"step {template.key!r} is not a map to expand")
        first = len(self.steps)
        children = tuple(range(first, first + count))
        added = [
            PlanStep(
                index=first + i,
                key=f"{template.key}[{i if labels is None else labels[i]}]",
                name=template.name,
                queue=template.queue,
                priority=template.priority,
                retry=template.retry,
                timeout=template.timeout,
                deps=template.deps,
                dependents=(index,),
                call=template.call,
                map_over=template.map_over,
                element=i,
                max_wait=template.max_wait,
                kind=template.kind,
                task_options=template.task_options,
                version=template.version,
                limits=template.limits,
            )
            for i in range(count)
        ]
        steps = list(self.steps)
        steps[index] = replace(template, deps=template.deps + children)
        for d in dict.fromkeys(template.deps):
            steps[d] = replace(steps[d], dependents=steps[d].dependents + children)
        steps.extend(added)
        index_of = dict(self.index)
        for step in added:
            if step.key in index_of:
                raise PlanError(f"expanding {template.key!r} makes a duplicate key {step.key!r}")
            index_of[step.key] = step.index
        return replace(
            self,
            steps=tuple(steps),
            index=index_of,
            expanded=self.expanded | {index},
            encoded=b"",  # its encoding holds the expansion
        )

    @functools.cached_property
    def map_sources(self) -> frozenset[int]:
        """The steps whose outputs are lists that maps run over."""
        return frozenset(s.map_over for s in self.steps if s.map_over is not None)

    def collected(self, index: int) -> tuple[int, ...]:
        """The steps map ``index`` expanded into (none if it was not expanded)."""
        template = self.steps[index]
        return tuple(d for d in template.deps if self.steps[d].element is not None)

    def to_wire(self) -> list[Any]:
        return _wire(self.pipeline, self.steps, self.result_deps, self.result, self.params)

    def to_bytes(self) -> bytes:
        return self.encoded or codec.encode(self.to_wire())

    @classmethod
    def from_bytes(cls, data: bytes) -> Plan:
        try:
            wire = codec.decode(data)
        except CodecError as exc:
            raise PlanError(f"cannot decode plan: {exc}") from exc
        return cls.from_wire(wire)

    @classmethod
    def from_wire(cls, wire: Any) -> Plan:
        try:
            version, pipeline, raw_steps, result_keys, result, params = wire
            if version != PLAN_VERSION:
                raise PlanError(f"unsupported plan version {version!r}")
            if not isinstance(params, bytes):
                raise PlanError("malformed plan: parameters must be encoded bytes")
            specs = [
                StepSpec(
                    key=s[0],
                    name=s[1],
                    queue=s[2],
                    priority=s[3],
                    retry=RetryPolicy.from_wire(s[4]),
                    timeout=s[5],
                    deps=tuple(s[6]),
                    call=s[7],
                    **_options(s[8] if len(s) > 8 else {}),
                )
                for s in raw_steps
            ]
        except PlanError:
            raise
        except (TypeError, ValueError, IndexError) as exc:
            raise PlanError(f"malformed plan: {exc}") from exc
        return build(
            pipeline,
            specs,
            result_keys=tuple(result_keys),
            result=result,
            params=params,
            keep_encoding=False,
        )


_OPTIONS = frozenset(
    {
        "when",
        "accept_missing",
        "map_over",
        "max_wait",
        "map_key",
        "kind",
        "task_options",
        "version",
        "limits",
    }
)


def _options(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not set(value) <= _OPTIONS:
        raise PlanError(f"malformed plan: step options {value!r:.80}")
    options: dict[str, Any] = dict(value)
    if "limits" in options:
        options["limits"] = StepLimits.from_wire(options["limits"])
    task_options = options.get("task_options")
    if task_options is None:
        return options
    if not isinstance(task_options, dict):
        raise PlanError(f"malformed plan: task options {task_options!r:.80}")
    return {**options, "task_options": tuple(sorted(task_options.items()))}


def _wire(
    pipeline: str,
    steps: Sequence[PlanStep],
    result_deps: Sequence[int],
    result: bytes,
    params: bytes,
) -> list[Any]:
    retries: dict[int, list[Any]] = {}  # by id: most steps share one policy, encoded once
    wired: list[list[Any]] = []
    for s in steps:
        retry = retries.get(id(s.retry))
        if retry is None:
            retry = retries[id(s.retry)] = s.retry.to_wire()
        fields = [
            s.key,
            s.name,
            s.queue,
            s.priority,
            retry,
            s.timeout,
            [steps[d].key for d in s.deps],
            s.call,
        ]
        options = s.options(steps)
        if options:
            fields.append(options)
        wired.append(fields)
    return [
        PLAN_VERSION,
        pipeline,
        wired,
        [steps[d].key for d in result_deps],
        result,
        params,
    ]


def _validate_spec(spec: StepSpec) -> None:
    if not isinstance(spec.key, str) or not spec.key:
        raise PlanError(f"step key must be a non-empty string, not {spec.key!r}")
    if not isinstance(spec.name, str) or not spec.name:
        raise PlanError(f"step {spec.key!r}: name must be a non-empty string")
    if not isinstance(spec.queue, str) or not spec.queue:
        raise PlanError(f"step {spec.key!r}: queue must be a non-empty string")
    if (
        not isinstance(spec.priority, int)
        or isinstance(spec.priority, bool)
        or not 0 <= spec.priority <= MAX_PRIORITY
    ):
        raise PlanError(f"step {spec.key!r}: priority must be an integer 0..{MAX_PRIORITY}")
    if spec.timeout is not None and (
        not isinstance(spec.timeout, int | float)
        or isinstance(spec.timeout, bool)
        or not spec.timeout > 0  # also refuses NaN
    ):
        raise PlanError(f"step {spec.key!r}: timeout must be a positive number of seconds")
    if not isinstance(spec.deps, tuple):
        raise PlanError(f"step {spec.key!r}: deps must be a tuple of step keys")
    for dep in spec.deps:  # a loop, not all(...): this runs once per step of every plan
        if not isinstance(dep, str):
            raise PlanError(f"step {spec.key!r}: deps must be a tuple of step keys")
    if not isinstance(spec.call, bytes):
        raise PlanError(f"step {spec.key!r}: call template must be bytes")
    if spec.when is not None and spec.when not in spec.deps:
        raise PlanError(f"step {spec.key!r}: its condition must be one of its inputs")
    if spec.map_over is not None and spec.map_over not in spec.deps:
        raise PlanError(f"step {spec.key!r}: the list it maps over must be one of its inputs")
    if spec.map_key is not None and (
        spec.map_over is None or not isinstance(spec.map_key, str) or not spec.map_key
    ):
        raise PlanError(f"step {spec.key!r}: map_key is the name of a field of the items")
    if spec.max_wait is not None and (
        not isinstance(spec.max_wait, int | float)
        or isinstance(spec.max_wait, bool)
        or not spec.max_wait > 0
    ):
        raise PlanError(f"step {spec.key!r}: max_wait must be a positive number of seconds")
    if not isinstance(spec.accept_missing, bool):
        raise PlanError(f"step {spec.key!r}: accept_missing must be a boolean")
    if not isinstance(spec.kind, str):
        raise PlanError(f"step {spec.key!r}: kind must be a string")
    if not isinstance(spec.task_options, tuple) or (
        spec.task_options
        and not all(
            isinstance(o, tuple) and len(o) == 2 and isinstance(o[0], str)
            for o in spec.task_options
        )
    ):
        raise PlanError(f"step {spec.key!r}: task options must be (name, value) pairs")
    if spec.version is not None:
        try:
            check_version(spec.version)
        except CodecError as exc:
            raise PlanError(f"step {spec.key!r}: {exc}") from None
    if spec.limits is not None:
        try:
            spec.limits.check()
        except PlanError as exc:
            raise PlanError(f"step {spec.key!r}: {exc}") from None
        key_input = spec.limits.key_input
        if key_input is not None and key_input >= len(spec.deps):
            raise PlanError(f"step {spec.key!r}: its limit key input is not one of its inputs")


def build(
    pipeline: str,
    specs: Sequence[StepSpec],
    *,
    result_keys: tuple[str, ...] = (),
    result: bytes = NULL_RESULT,
    params: bytes | None = None,
    keep_encoding: bool = True,
) -> Plan:
    """Validate ``specs`` and order them topologically into a :class:`Plan`.

    Raises :class:`PlanError` for duplicate keys, unknown dependencies and cycles.
    Specs already in dependency order keep their order.  The plan keeps the encoding its
    digest is made of for :meth:`Plan.to_bytes` (a pipeline compiled here is stored or
    sent next), unless ``keep_encoding`` is false (a plan read from a store or a message,
    held as long as its runs are in flight: the bytes would be memory kept for nothing).
    """
    if not isinstance(pipeline, str) or not pipeline:
        raise PlanError("pipeline name must be a non-empty string")
    if not isinstance(result, bytes) or not (params is None or isinstance(params, bytes)):
        raise PlanError("pipeline result and parameters must be encoded bytes")
    if not all(isinstance(k, str) for k in result_keys):
        raise PlanError("pipeline result keys must be step keys")
    position: dict[str, int] = {}
    for i, spec in enumerate(specs):
        _validate_spec(spec)
        if spec.key in position:
            raise PlanError(f"duplicate step key {spec.key!r}")
        position[spec.key] = i
    for spec in specs:
        for dep in spec.deps:
            if dep not in position:
                raise PlanError(f"step {spec.key!r} depends on unknown step {dep!r}")
    for key in result_keys:
        if key not in position:
            raise PlanError(f"pipeline result refers to unknown step {key!r}")

    order = _topological_order(specs, position)
    new_index = {specs[old].key: new for new, old in enumerate(order)}
    dependents: list[list[int]] = [[] for _ in order]
    deps_of: list[tuple[int, ...]] = []
    for new, old in enumerate(order):
        deps = tuple([new_index[d] for d in specs[old].deps])
        deps_of.append(deps)
        for d in dict.fromkeys(deps) if len(deps) > 1 else deps:
            dependents[d].append(new)
    # Positional, in PlanStep's field order, one spec lookup a step: this runs once per
    # step of every compiled plan (11,002 for the chain of chords), keywords cost twice.
    make = _make_step
    steps = tuple(
        [
            make(
                new,
                spec.key,
                spec.name,
                spec.queue,
                spec.priority,
                spec.retry,
                None if spec.timeout is None else float(spec.timeout),
                deps_of[new],
                tuple(dependents[new]),
                spec.call,
                None if spec.when is None else new_index[spec.when],
                spec.accept_missing,
                None if spec.map_over is None else new_index[spec.map_over],
                None,  # element: only a map's expansion sets it
                None if spec.max_wait is None else float(spec.max_wait),
                spec.map_key,
                spec.kind,
                tuple(sorted(spec.task_options)) if spec.task_options else (),
                spec.version,
                spec.limits,
            )
            for new, spec in enumerate([specs[old] for old in order])
        ]
    )
    params_bytes = codec.encode({}) if params is None else params
    result_deps = tuple(new_index[k] for k in result_keys)
    encoded = codec.encode(_wire(pipeline, steps, result_deps, result, params_bytes))
    return Plan(
        pipeline=pipeline,
        steps=steps,
        result_deps=result_deps,
        result=result,
        params=params_bytes,
        digest=hashlib.sha256(encoded).hexdigest(),
        index=new_index,
        encoded=encoded if keep_encoding else b"",
    )


def _topological_order(specs: Sequence[StepSpec], position: dict[str, int]) -> list[int]:
    """Kahn's algorithm taking the earliest-declared ready step first; names any cycle."""
    n = len(specs)
    waiting = [0] * n
    children: list[list[int]] = [[] for _ in range(n)]
    for i, spec in enumerate(specs):
        unique = dict.fromkeys(spec.deps)
        waiting[i] = len(unique)
        for dep in unique:
            children[position[dep]].append(i)
    ready = [i for i in range(n) if waiting[i] == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for child in children[i]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, child)
    if len(order) != n:
        raise PlanError(
            "cycle between steps: " + " -> ".join(_find_cycle(specs, position, waiting))
        )
    return order


def _find_cycle(
    specs: Sequence[StepSpec], position: dict[str, int], waiting: list[int]
) -> list[str]:
    # Walk dependencies among the nodes left over by Kahn's algorithm until one repeats.
    start = next(i for i, w in enumerate(waiting) if w > 0)
    seen: dict[int, int] = {}
    path: list[int] = []
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(position[d] for d in specs[node].deps if waiting[position[d]] > 0)
    cycle = [*path[seen[node] :], node]
    return [specs[i].key for i in reversed(cycle)]
