"""A pipeline of Celery tasks, for running without a Celery broker configured."""

from aexec import pipeline
from aexec.celery import celery_step

add = celery_step("proj.tasks.add", queue="celery")


@pipeline
def celery_sum() -> object:
    return add(1, 2)
