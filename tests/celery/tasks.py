"""An ordinary Celery application, as a team that runs Celery has one: the tests start
unchanged Celery workers on it (``celery -A tests.celery.tasks worker``) and drive them
from aexec.

Configured by the environment the tests give the worker: ``AEXEC_TEST_CELERY_BROKER``,
``AEXEC_TEST_CELERY_BACKEND`` (``rpc://`` or ``redis://...``) and
``AEXEC_TEST_CELERY_LEDGER``, a file where every task execution appends one line (so a test
can count how many times a task really ran).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

app = Celery(
    "tests.celery.tasks",
    broker=os.environ.get("AEXEC_TEST_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("AEXEC_TEST_CELERY_BACKEND", "rpc://"),
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json", "msgpack"],
    task_track_started=True,
    result_expires=600,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    task_queue_max_priority=10,
    # Where the worker sends what follows in a chain or chord (Celery's own canvases).
    task_default_queue=os.environ.get("AEXEC_TEST_CELERY_QUEUE", "celery"),
)


def _ledger(name: str, *values: Any) -> None:
    """One line per execution, in the ledger file and in the worker's log."""
    line = " ".join([name, *map(str, values)])
    path = os.environ.get("AEXEC_TEST_CELERY_LEDGER")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    print(f"ledger: {line}", flush=True)  # after the file: seen printed, it is written


@app.task
def add(x: int, y: int) -> int:
    _ledger("add", x, y)
    return x + y


@app.task
def mul(x: int, y: int) -> int:
    _ledger("mul", x, y)
    return x * y


@app.task
def xsum(values: list[int]) -> int:
    _ledger("xsum", *values)
    return sum(values)


@app.task
def noop(*args: Any, **kwargs: Any) -> None:
    _ledger("noop")


@app.task
def echo(value: Any) -> Any:
    """Returns what it got, with the Python types it arrived as."""
    _ledger("echo")
    return {"value": value, "type": type(value).__name__}


@app.task
def fail(message: str) -> None:
    _ledger("fail", message)
    raise ValueError(message)


@app.task(bind=True, max_retries=5)
def flaky(self: Any, times: int) -> int:
    """Retries itself ``times`` times, then returns how many retries it took."""
    _ledger("flaky", self.request.retries)
    if self.request.retries < times:
        raise self.retry(exc=RuntimeError(f"not yet ({self.request.retries})"), countdown=0.05)
    return int(self.request.retries)


@app.task
def sleep(seconds: float, name: str = "") -> str:
    _ledger("sleep-start", name)
    time.sleep(seconds)
    _ledger("sleep-end", name)
    return name


@app.task(acks_late=True)
def sleep_late(seconds: float, name: str = "") -> str:
    """Acked after it ran: a worker killed while it runs leaves it to another."""
    _ledger("sleep_late-start", name)
    time.sleep(seconds)
    _ledger("sleep_late-end", name)
    return name
