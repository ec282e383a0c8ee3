"""Celery canvases run through aexec against a real Celery worker (results over Redis,
which Celery's own chords need), beside the same canvas run by Celery itself."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, chain, chord, group

from aexec.celery import from_canvas
from aexec.config import Settings
from aexec.errors import DefinitionError
from aexec.executor import Executor
from tests.celery import canvases
from tests.plugins.celery import CeleryWorkers

pytestmark = pytest.mark.rabbitmq

WAIT = 120.0


@pytest.fixture
def client(celery_redis: CeleryWorkers) -> Iterator[Celery]:
    """A Celery client app without the tasks' code, as a service that only sends them."""
    app = Celery("client", broker=celery_redis.broker, backend=celery_redis.backend)
    app.conf.update(
        task_default_queue=celery_redis.queue, task_queue_max_priority=10, result_expires=600
    )
    try:
        yield app
    finally:  # its sockets to RabbitMQ go with it, not to the garbage collector
        app.close()


def close_backend(app: Celery) -> None:
    """Close this thread's result backend of ``app`` (Celery keeps one per thread) and its
    sockets to Redis."""
    backend = app.backend
    consumer = getattr(backend, "result_consumer", None)
    if consumer is not None:
        consumer.stop()
        # A result still subscribed unsubscribes when the collector takes it
        # (``AsyncResult.__del__``), on a new connection if the pubsub is closed: the
        # socket a later test would meet.  Nothing is subscribed once it is stopped.
        consumer.subscribed_to.clear()
    backend.client.connection_pool.disconnect()


def stubs(app: Celery) -> Any:
    """The client's handles on the worker's tasks, by name (their bodies never run here)."""

    def remote(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("runs on the Celery worker")

    class Tasks:
        noop = app.task(shared=False, name="tests.celery.tasks.noop")(remote)
        add = app.task(shared=False, name="tests.celery.tasks.add")(remote)
        mul = app.task(shared=False, name="tests.celery.tasks.mul")(remote)
        xsum = app.task(shared=False, name="tests.celery.tasks.xsum")(remote)
        echo = app.task(shared=False, name="tests.celery.tasks.echo")(remote)

    return Tasks


async def through_celery(workflow: Any) -> Any:
    def run() -> Any:
        try:
            return workflow.apply_async().get(timeout=WAIT)
        finally:
            close_backend(workflow.app)

    return await asyncio.to_thread(run)


async def through_aexec(workers: CeleryWorkers, tmp_path: Path, workflow: Any) -> Any:
    settings = Settings(
        home=str(tmp_path / "home"),
        celery_broker=workers.broker,
        celery_backend=workers.backend,
        queue_prefix=workers.prefix,
    )
    async with Executor(settings) as ex:
        run = await ex.submit(from_canvas(workflow, queue=workers.queue))
        return await run.result()


@pytest.mark.parametrize(
    ("build", "tasks"),
    [(canvases.chain_of_chords, 57), (canvases.nested_graph, 23)],
    ids=["chain_of_chords_57", "nested_graph_23"],
)
async def test_the_ovh_workflows_give_celerys_results_with_every_task_run_once(
    celery_redis: CeleryWorkers, client: Celery, tmp_path: Path, build: Any, tasks: int
) -> None:
    t = stubs(client)
    async with asyncio.timeout(WAIT):
        before = len(celery_redis.executions("noop"))
        expected = await through_celery(build(t.noop))
        by_celery = len(celery_redis.executions("noop")) - before
        result = await through_aexec(celery_redis, tmp_path, build(t.noop))
        by_aexec = len(celery_redis.executions("noop")) - before - by_celery
    assert result == expected
    assert (by_celery, by_aexec) == (tasks, tasks)


async def test_results_flow_through_chains_chords_partials_immutables_and_links_as_in_celery(
    celery_redis: CeleryWorkers, client: Celery, tmp_path: Path
) -> None:
    t = stubs(client)

    def build() -> Any:
        fan = group(t.mul.s(2), t.mul.s(3), chain(t.add.s(1), t.mul.s(10)))
        return (
            t.add.s(1, 2)  # 3
            | fan  # [6, 9, 40]
            | t.xsum.s()  # 55
            | chord([t.add.s(i) for i in range(3)], t.xsum.s())  # [55, 56, 57] -> 168
            | t.add.si(100, 1).set(link=t.echo.s())  # immutable: 101, and a callback
            | t.mul.s(2)  # 202: the chain goes on with add's result, not the callback's
        )

    async with asyncio.timeout(WAIT):
        expected = await through_celery(build())
        echoes = len(celery_redis.executions("echo"))
        result = await through_aexec(celery_redis, tmp_path, build())
    assert result == expected == 202
    assert len(celery_redis.executions("echo")) == echoes + 1  # the link ran, once


def test_what_aexec_cannot_do_of_a_canvas_is_named_when_it_is_converted() -> None:
    app = Celery("client", set_as_current=False)

    def t(*args: Any) -> None:
        return None

    task = app.task(name="tasks.t")(t)
    with pytest.raises(DefinitionError, match="link_error callbacks are not supported"):
        from_canvas(task.s().set(link_error=task.s()))
    with pytest.raises(DefinitionError, match="chunks is not supported"):
        from_canvas(task.chunks([(1,), (2,)], 1))
