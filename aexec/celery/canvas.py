"""Celery canvases as aexec pipelines: :func:`from_canvas`.

A Celery signature is a dict (``task``, ``args``, ``kwargs``, ``options``,
``subtask_type``, ``immutable``), and so are its chains, groups and chords, nested: this
module reads that shape and builds the same workflow with :mod:`aexec.canvas`, whose steps
are Celery tasks (:func:`~aexec.celery.celery_step`).  It needs no Celery import, and it
works on a canvas built with Celery as on its ``dict()`` or JSON form.

Celery's semantics hold because :mod:`aexec.canvas` keeps them: results are passed along
chains (first argument, unless the signature is immutable), a chord's body takes the list
of its header's results, a group's result is the list of its members', execution stops on
failure, and a ``link`` callback runs after its task with its result.  What aexec does not
do is named at once, with a :class:`~aexec.errors.DefinitionError`: ``link_error``
callbacks, ``chunks``/``xmap``/``xstarmap``, and options that would change what a task
does (``task_id``, ``routing_key`` and ``exchange`` routing elsewhere than a queue).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aexec import canvas
from aexec.celery import DEFAULT_QUEUE, celery_step
from aexec.dsl import Pipeline, StepDef, _definition_error, _where

__all__ = ["from_canvas"]

# Options that travel with a task message; the others (serializer, retry policies of the
# client, …) change nothing on the worker's side.
_TASK_OPTIONS = ("priority", "countdown", "expires", "time_limit", "soft_time_limit")
_BUILTINS = {"celery.chunks": "chunks", "celery.map": "xmap", "celery.starmap": "xstarmap"}
_REFUSED = {
    "link_error": "link_error callbacks are not supported: handle failures in the task, or "
    "run a cleanup pipeline after a failed run",
    "task_id": "a fixed task_id is not supported: aexec names each attempt's task",
    "exchange": "routing through an exchange is not supported: give the task a queue",
}


def from_canvas(
    signature: Mapping[str, Any], *, name: str | None = None, queue: str = DEFAULT_QUEUE
) -> Pipeline:
    """The pipeline that runs Celery canvas ``signature`` (any nesting of ``chain``,
    ``group``, ``chord``, ``|``, ``.s``/``.si``, partial arguments and ``link``) on Celery
    workers.  Each task goes to its ``queue`` option, else to ``queue``.  ``name`` names the
    pipeline (default: ``celery:<first task>``)."""
    where = _where()
    steps: dict[tuple[Any, ...], StepDef[..., Any]] = {}
    workflow = _convert(signature, queue, steps, where)
    return canvas.pipeline(workflow, name=name or f"celery:{_first_task(signature)}")


def _convert(
    sig: Any, queue: str, steps: dict[tuple[Any, ...], StepDef[..., Any]], where: str
) -> canvas.Canvas:
    if not isinstance(sig, Mapping):
        raise _definition_error(f"not a Celery signature: {sig!r:.80}", where)
    kind = sig.get("subtask_type")
    kwargs = sig.get("kwargs") or {}
    options = sig.get("options") or {}
    if kind == "chain":
        return canvas.chain(*[_convert(t, queue, steps, where) for t in kwargs.get("tasks", ())])
    if kind == "group":
        return canvas.group(*[_convert(t, queue, steps, where) for t in _tasks(kwargs)])
    if kind == "chord":
        header = kwargs.get("header")
        members = _tasks(header) if isinstance(header, Mapping) else header
        return canvas.chord(
            canvas.group(*[_convert(t, queue, steps, where) for t in members or ()]),
            _convert(kwargs.get("body"), queue, steps, where),
        )
    if kind:
        raise _definition_error(f"Celery's {kind} is not supported in aexec", where)
    return _signature(sig, kwargs, options, queue, steps, where)


def _tasks(kwargs: Mapping[str, Any]) -> Sequence[Any]:
    """A group's members: a group's ``kwargs`` hold them, or it is a group signature."""
    if kwargs.get("subtask_type") == "group":
        kwargs = kwargs.get("kwargs") or {}
    tasks = kwargs.get("tasks", ())
    return list(tasks)


def _signature(
    sig: Mapping[str, Any],
    kwargs: Mapping[str, Any],
    options: Mapping[str, Any],
    queue: str,
    steps: dict[tuple[Any, ...], StepDef[..., Any]],
    where: str,
) -> canvas.Signature:
    task = sig.get("task")
    if not isinstance(task, str) or not task:
        raise _definition_error(f"a Celery signature without a task name: {sig!r:.80}", where)
    builtin = _BUILTINS.get(task)
    if builtin is not None:
        raise _definition_error(f"Celery's {builtin} is not supported in aexec", where)
    for option, why in _REFUSED.items():
        if options.get(option):
            raise _definition_error(f"task {task!r}: {why}", where)
    chosen = {k: options[k] for k in _TASK_OPTIONS if options.get(k) is not None}
    task_queue = options.get("queue") or queue
    if not isinstance(task_queue, str):  # a kombu Queue
        task_queue = getattr(task_queue, "name", queue)
    ident = (task, task_queue, *sorted(chosen.items()))
    step = steps.get(ident)
    if step is None:
        step = steps[ident] = celery_step(task, queue=task_queue, **chosen)
    result = canvas.Signature(
        step, tuple(sig.get("args") or ()), dict(kwargs), immutable=bool(sig.get("immutable"))
    )
    links = options.get("link") or ()
    for callback in [links] if isinstance(links, Mapping) else links:
        result = result.link(_convert(callback, queue, steps, where))
    return result


def _first_task(sig: Any) -> str:
    while isinstance(sig, Mapping):
        task = sig.get("task")
        kwargs = sig.get("kwargs") or {}
        if sig.get("subtask_type") in ("chain", "group"):
            tasks = list(kwargs.get("tasks", ()))
            if not tasks:
                break
            sig = tasks[0]
        elif sig.get("subtask_type") == "chord":
            sig = kwargs.get("body")
        elif isinstance(task, str):
            return task
        else:
            break
    return "canvas"
