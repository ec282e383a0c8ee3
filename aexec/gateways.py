"""The gateways of one coordinator (:mod:`aexec.gateway`), by step kind: each is started
the first time a plan needs it and closed when the coordinator stops, and the steps it
sent for a run that was cancelled are revoked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from aexec.batch import ActiveRun
from aexec.errors import AexecError, ConfigError
from aexec.gateway import Gateway
from aexec.inbox import Item
from aexec.plan import Plan
from aexec.types import StepStatus


class Gateways:
    """``by_kind``, started on demand with ``post`` (the coordinator's inbox)."""

    def __init__(self, by_kind: Mapping[str, Gateway], post: Callable[[Item], None]) -> None:
        self.by_kind = by_kind
        self._post = post
        self._open: set[str] = set()
        self._lock = asyncio.Lock()

    def __bool__(self) -> bool:
        return bool(self.by_kind)

    async def open_for(self, plan: Plan) -> None:
        """Start the gateways that the foreign steps of ``plan`` (Celery tasks) go through,
        once; a :class:`~aexec.errors.ConfigError` if there is none for a kind."""
        for kind in sorted(plan.kinds):
            gateway = self.by_kind.get(kind)
            if gateway is None:
                raise ConfigError(
                    f"pipeline {plan.pipeline!r} has {kind} steps, which this coordinator "
                    f"cannot send: configure a {kind} broker (AEXEC_{kind.upper()}_BROKER="
                    "amqp://..., or an amqp:// --broker)"
                )
            if kind in self._open:
                continue
            async with self._lock:
                if kind not in self._open:
                    await gateway.start(self._post)
                    self._open.add(kind)

    async def close(self) -> None:
        opened, self._open = self._open, set()
        for kind in sorted(opened):
            await self.by_kind[kind].close()

    def revoke(
        self, runs: list[ActiveRun], start_work: Callable[[Coroutine[Any, Any, Any]], None]
    ) -> None:
        """Stop the gateway steps that the cancelled ``runs`` had sent (each revocation a
        task started with ``start_work``; none once the coordinator is stopping)."""
        for kind, gateway in self.by_kind.items():
            attempts = [
                (run.run_id, step.key, run.state.attempts[step.index])
                for run in runs
                for step in run.plan.steps
                if step.kind == kind
                and run.state.attempts[step.index] > 0
                and run.state.status[step.index] is StepStatus.CANCELLED
            ]
            if attempts:
                with contextlib.suppress(AexecError):
                    start_work(gateway.revoke(attempts))


__all__ = ["Gateways"]
