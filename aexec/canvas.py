"""Celery-style workflow builders: ``chain``, ``group``, ``chord``, ``step.s()``, ``|``.

They describe a workflow as Celery's canvas does, and compile to an ordinary plan (one
step per signature): nothing of the workflow travels in messages, and building one is
linear in its size (a 1,000-chord chain is as cheap as its 11,002 steps)::

    from aexec import step
    from aexec.canvas import chain, chord, group, pipeline

    @step
    def noop(*args, **kwargs):
        return True

    workflow = chain([noop.s(0), chord([noop.s(i) for i in range(10)], noop.s()), noop.s()])
    ovh = pipeline(workflow, name="ovh")      # run it as any pipeline

The semantics are Celery's:

- ``step.s(*args, **kwargs)`` is a signature; in a chain the previous result is passed as
  its first argument.  ``step.si(...)`` is immutable: it runs after the previous task but
  does not take its result.
- ``chain(a, b, c)`` (or a list, or ``a | b | c``) runs one after another.
- ``group(a, b, c)`` runs in parallel, each member taking the same incoming result; its
  result is the list of its members' results (a nested group's results are flattened into
  it, a chain contributes its last result).
- ``chord(header, body)`` is ``chain(group(header), body)``: the body takes the list of the
  header's results.
- ``sig.link(callback)`` runs ``callback`` after ``sig`` with its result, on a branch of
  its own (the chain goes on with ``sig``'s result).
- Execution stops on failure: a failed task's dependents do not run (they are skipped) and
  the run fails; tasks that do not depend on it still finish.

Inside a ``@pipeline`` body, :func:`wire` adds a workflow's steps and returns its result
handle (a list of handles for a group), to combine with ordinary step calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from aexec.dsl import _BUILDER, Output, Pipeline, StepDef, _definition_error, _where

__all__ = ["Canvas", "Signature", "chain", "chord", "group", "pipeline", "wire"]

_NOTHING: Any = object()  # no incoming result: the start of a workflow


class Canvas:
    """A workflow: a signature, chain, group or chord.  ``a | b`` chains them."""

    __slots__ = ()

    def __or__(self, other: Canvas) -> chain:
        if not isinstance(other, Canvas):
            return NotImplemented
        return chain(self, other)

    def __ror__(self, other: Canvas) -> chain:
        if not isinstance(other, Canvas):
            return NotImplemented
        return chain(other, self)


class Signature(Canvas):
    """A step with some of its arguments: ``step.s(...)`` or ``step.si(...)``."""

    __slots__ = ("args", "immutable", "key", "kwargs", "links", "step")

    def __init__(
        self,
        step: StepDef[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        immutable: bool = False,
        key: str | None = None,
        links: tuple[Canvas, ...] = (),
    ) -> None:
        if not isinstance(step, StepDef):
            raise _definition_error(f"a signature needs a step, not {step!r}")
        self.step = step
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.immutable = immutable
        self.key = key
        self.links = tuple(links)

    def alias(self, key: str) -> Signature:
        """The same signature, added under the step key ``key``."""
        return Signature(
            self.step, self.args, self.kwargs, immutable=self.immutable, key=key, links=self.links
        )

    def link(self, callback: Canvas) -> Signature:
        """The same signature with ``callback`` run after it (Celery's ``link``): the
        callback takes its result as a chained task would, on a branch of its own; what
        follows the signature in a chain still takes the signature's result."""
        if not isinstance(callback, Canvas):
            raise _definition_error(f"a link is a signature or workflow, not {callback!r}")
        return Signature(
            self.step,
            self.args,
            self.kwargs,
            immutable=self.immutable,
            key=self.key,
            links=(*self.links, callback),
        )

    def __repr__(self) -> str:
        kind = "si" if self.immutable else "s"
        return f"{self.step.name}.{kind}(*{self.args!r}, **{self.kwargs!r})"


def _members(what: str, tasks: tuple[Any, ...]) -> tuple[Canvas, ...]:
    """Celery's calling conventions: ``f(a, b)``, ``f([a, b])`` or ``f(generator)``."""
    items: Iterable[Any] = tasks
    if len(tasks) == 1 and not isinstance(tasks[0], Canvas):
        items = tasks[0]
        if not isinstance(items, Iterable):
            raise _definition_error(f"{what} takes signatures, not {items!r}")
    members = tuple(items)
    for member in members:
        if not isinstance(member, Canvas):
            raise _definition_error(
                f"{what} takes signatures (step.s(...)), chains, groups and chords, not {member!r}"
            )
    return members


class chain(Canvas):
    """Tasks one after another; each takes the previous result first (unless immutable)."""

    __slots__ = ("tasks",)

    def __init__(self, *tasks: Any) -> None:
        self.tasks = _members("chain", tasks)

    def __repr__(self) -> str:
        return f"chain({len(self.tasks)} tasks)"


class group(Canvas):
    """Tasks in parallel; the result is the list of their results."""

    __slots__ = ("tasks",)

    def __init__(self, *tasks: Any) -> None:
        self.tasks = _members("group", tasks)

    def __repr__(self) -> str:
        return f"group({len(self.tasks)} tasks)"


class chord(Canvas):
    """A group (the header) chained to a body, which takes the list of the header's results."""

    __slots__ = ("body", "header")

    def __init__(self, header: Any, body: Canvas | None = None) -> None:
        self.header = header if isinstance(header, group) else group(header)
        if body is not None and not isinstance(body, Canvas):
            raise _definition_error(f"a chord's body is a signature, not {body!r}")
        self.body = body

    def __call__(self, body: Canvas) -> chord:
        """Celery's ``chord(header)(body)``."""
        return chord(self.header, body)

    def __repr__(self) -> str:
        return f"chord({len(self.header.tasks)} tasks, {self.body!r})"


Result = Any  # an Output, a list of them (a group's), or _NOTHING


def _chain_links(start: chain) -> Iterator[Canvas]:
    """A chain's tasks with nested chains spliced in, without recursion (``a | b | c | ...``
    nests chains as deep as it is long)."""
    stack: list[Iterator[Canvas]] = [iter(start.tasks)]
    while stack:
        task = next(stack[-1], None)
        if task is None:
            stack.pop()
        elif isinstance(task, chain):
            stack.append(iter(task.tasks))
        else:
            yield task


def _add(node: Canvas, incoming: Result) -> Result:
    match node:
        case Signature():
            builder = _BUILDER.get(None)
            if builder is None:
                raise _definition_error("a workflow is wired only inside a @pipeline body")
            args, after = node.args, ()
            if incoming is not _NOTHING:
                if node.immutable:
                    after = tuple(incoming) if isinstance(incoming, list) else (incoming,)
                else:
                    args = (incoming, *args)
            result = builder.add(node.step, node.key, args, node.kwargs, after)
            for callback in node.links:
                _add(callback, result)
            return result
        case chain():
            for task in _chain_links(node):
                incoming = _add(task, incoming)
            return incoming
        case group():
            results: list[Output] = []
            for task in node.tasks:
                result = _add(task, incoming)
                if isinstance(result, list):
                    results.extend(result)  # a nested group's results, flattened
                elif result is not _NOTHING:
                    results.append(result)
            return results
        case chord():
            results = _add(node.header, incoming)
            return results if node.body is None else _add(node.body, results)
    raise _definition_error(f"not a workflow: {node!r}")


def wire(workflow: Canvas) -> Any:
    """Inside a ``@pipeline`` body: add ``workflow``'s steps and return its result — an
    output handle, or a list of them for a group."""
    if not isinstance(workflow, Canvas):
        raise _definition_error(f"not a workflow: {workflow!r}")
    result = _add(workflow, _NOTHING)
    return None if result is _NOTHING else result


def pipeline(workflow: Canvas, *, name: str) -> Pipeline:
    """A pipeline (without parameters) that runs ``workflow``; its result is the workflow's."""
    where = _where()
    if not isinstance(workflow, Canvas):
        raise _definition_error(f"not a workflow: {workflow!r}", where)
    if not isinstance(name, str) or not name:
        raise _definition_error("pipeline name must be a non-empty string", where)

    def body() -> Any:
        return wire(workflow)

    return Pipeline(body, name=name, where=where)
