"""Drive unchanged Celery workers: Celery tasks as aexec steps.

``celery_step("proj.tasks.resize", queue="images")`` declares a step that the coordinator
sends as a Celery task message (protocol v2, JSON by default) to the Celery queue, where
an unchanged Celery worker runs it; its result comes back over the ``rpc://`` backend or
a Redis backend and feeds the step's dependents.  Neither needs Celery installed here:
the coordinator speaks the protocol itself (:mod:`aexec.celery.protocol`,
:mod:`aexec.celery.gateway`).  A Redis backend needs the ``celery`` extra (``redis``).

Values cross as JSON-compatible data (plus datetime, date, time, Decimal, UUID and
bytes, as kombu encodes them); a value that does not fit fails the step with a clear error.

``from_canvas(workflow)`` turns a Celery canvas (chains, groups, chords, ``.s``/``.si``,
``link``) into a pipeline of such steps, with Celery's semantics.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aexec.dsl import (
    Pipeline,
    StepDef,
    _check_options,
    _definition_error,
    _retry_policy,
    _version,
    _where,
)

if TYPE_CHECKING:
    from aexec.config import Settings

KIND = "celery"
DEFAULT_QUEUE = "celery"


def _seconds(name: str, option: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise _definition_error(f"Celery step {name!r}: {option} must be a number of seconds >= 0")
    return float(value)


def celery_step(
    name: str,
    *,
    queue: str = DEFAULT_QUEUE,
    priority: int = 0,
    retries: int = 0,
    retry_backoff: float = 1.0,
    retry_backoff_max: float = 60.0,
    countdown: float | None = None,
    eta: dt.datetime | None = None,
    expires: float | None = None,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
    serializer: str = "json",
    version: str | None = None,
) -> StepDef[..., Any]:
    """A step that runs Celery task ``name`` on a Celery worker consuming ``queue``.

    ``priority`` (0..10) is the AMQP priority of its message (a Celery queue with
    ``x-max-priority`` orders by it); ``countdown`` (seconds) or ``eta`` (a datetime
    with a time zone) delay it; ``expires`` (seconds) drops it if no worker started it by
    then; ``time_limit``/``soft_time_limit`` (seconds) are Celery's time limits;
    ``serializer`` is ``"json"`` or ``"msgpack"`` (never pickle).  ``retries`` are aexec's:
    a failed task is sent again as a new task (a task may also retry itself, which is one
    attempt to aexec).

    ``version`` routes the task as ``remote_step(version=)`` routes a step: to the queue
    ``<queue>@<version>`` (``images@2``), which only the Celery workers of that release
    consume (``celery worker -Q images@2``, and ``-Q images,images@2`` to take unversioned
    ones too), under the same task name; with no such queue the step fails at once
    (``UnroutableError``)."""
    where = _where()
    _check_options(name, queue, priority, retries, retry_backoff, None)
    if serializer not in ("json", "msgpack"):
        raise _definition_error(
            f"Celery step {name!r}: serializer must be 'json' or 'msgpack' (never pickle)", where
        )
    if eta is not None and (not isinstance(eta, dt.datetime) or eta.tzinfo is None):
        raise _definition_error(
            f"Celery step {name!r}: eta must be a datetime with a time zone", where
        )
    options: dict[str, Any] = {
        "serializer": serializer,
        "countdown": _seconds(name, "countdown", countdown),
        "eta": None if eta is None else eta.isoformat(),
        "expires": _seconds(name, "expires", expires),
        "time_limit": _seconds(name, "time_limit", time_limit),
        "soft_time_limit": _seconds(name, "soft_time_limit", soft_time_limit),
    }
    return StepDef(
        None,
        name=name,
        queue=queue,
        priority=priority,
        retry=_retry_policy(name, retries, retry_backoff, retry_backoff_max),
        where=where,
        kind=KIND,
        version=_version(name, version, where),
        task_options=tuple(sorted((k, v) for k, v in options.items() if v is not None)),
    )


def from_canvas(
    signature: Mapping[str, Any], *, name: str | None = None, queue: str = DEFAULT_QUEUE
) -> Pipeline:
    """The pipeline that runs Celery canvas ``signature`` on Celery workers: see
    :func:`aexec.celery.canvas.from_canvas`."""
    from aexec.celery.canvas import from_canvas as convert

    return convert(signature, name=name, queue=queue)


def gateway_wanted(settings: Settings) -> bool:
    """Whether a coordinator built from ``settings`` sends Celery steps: a Celery broker
    is configured, or aexec's own broker is RabbitMQ.  Without either (embedded mode), the
    gateway and its AMQP client are not even imported."""
    if settings.celery_broker is not None:
        return True
    return settings.broker is not None and settings.broker.startswith(("amqp:", "amqps:"))


__all__ = ["KIND", "celery_step", "from_canvas", "gateway_wanted"]
