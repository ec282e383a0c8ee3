"""OpenTelemetry traces (the ``otel`` extra): a trace per run, a span per step attempt.

Nothing here imports OpenTelemetry unless it is installed *and* the program set a tracer
provider (``opentelemetry.trace.set_tracer_provider``) before the coordinator or worker
started: otherwise :func:`load` returns None and aexec does no tracing work at all.

* The coordinator starts a span ``aexec run <pipeline>`` when it starts (or takes over) a
  run, and ends it when the run ends (or is let go of), with the run's status.
* Every step message of the run carries the run span's W3C ``traceparent`` (an optional
  last field of the message, covered by its signature).
* The worker runs each attempt inside a span ``aexec step <key>`` (kind consumer), a child
  of that run span, current while the step's code runs (async steps, and sync steps in
  threads), so the spans the step makes nest inside it.  Steps run in ``--pool process``
  children get no span of their own: the children have no tracer provider.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aexec.messages import TRACEPARENT

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer


class RunSpan:
    """The span of one run, and the ``traceparent`` its step messages carry."""

    __slots__ = ("span", "traceparent")

    def __init__(self, span: Span, traceparent: str) -> None:
        self.span = span
        self.traceparent = traceparent


class Tracing:
    """Spans for runs and step attempts, through ``tracer``."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def start_run(self, run_id: str, pipeline: str, *, resumed: bool = False) -> RunSpan:
        from opentelemetry.trace import format_span_id, format_trace_id

        span = self._tracer.start_span(
            f"aexec run {pipeline}",
            attributes={
                "aexec.run_id": run_id,
                "aexec.pipeline": pipeline,
                "aexec.resumed": resumed,
            },
        )
        context = span.get_span_context()
        traceparent = (
            f"00-{format_trace_id(context.trace_id)}-{format_span_id(context.span_id)}"
            f"-{int(context.trace_flags):02x}"
        )
        return RunSpan(span, traceparent)

    def end_run(self, run: RunSpan, status: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        run.span.set_attribute("aexec.status", status)
        if status == "failed":
            run.span.set_status(Status(StatusCode.ERROR, "the run failed"))
        run.span.end()

    @contextlib.contextmanager
    def step(
        self, traceparent: str | None, run_id: str, step_key: str, attempt: int, worker: str
    ) -> Iterator[Span]:
        """The span of one attempt, current inside the block; a child of the run span that
        ``traceparent`` names (a root span of its own without one)."""
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent: Any = None
        if traceparent is not None and TRACEPARENT.match(traceparent):
            parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
        with self._tracer.start_as_current_span(
            f"aexec step {step_key}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "aexec.run_id": run_id,
                "aexec.step_key": step_key,
                "aexec.attempt": attempt,
                "aexec.worker": worker,
                "messaging.system": "rabbitmq",
            },
            record_exception=True,
            set_status_on_exception=True,
        ) as span:
            yield span


def load() -> Tracing | None:
    """Tracing, if the ``otel`` extra is installed and a tracer provider is set; else None."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None  # nobody set a provider up: spans would go nowhere
    return Tracing(trace.get_tracer("aexec"))


__all__ = ["RunSpan", "Tracing", "load"]
