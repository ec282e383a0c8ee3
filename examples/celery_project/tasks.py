"""An ordinary Celery project: the tasks and the app its workers run (nothing of aexec).

celery -A tasks worker -Q celery -l INFO
"""

import os

from celery import Celery

app = Celery(
    "tasks",
    broker=os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@localhost:5672//"),
    backend=os.environ.get("CELERY_RESULT_BACKEND", "rpc://"),
)
app.conf.task_track_started = True  # aexec shows the task running (optional)


@app.task
def noop(*args: object, **kwargs: object) -> bool:
    # Task accepts any arguments and does nothing
    return True


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def xsum(values: list[int]) -> int:
    return sum(values)
