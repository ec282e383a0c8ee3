"""A Celery canvas, as a Celery project writes it, run through aexec.

Before (Celery orchestrates)::

    result = workflow.apply_async()
    print(result.get())

After (aexec orchestrates the same Celery workers)::

    AEXEC_CELERY_BROKER=amqp://guest:guest@localhost:5672// python -m aexec run workflow.py
"""

from celery import chain, chord
from tasks import add, noop, xsum

from aexec.celery import from_canvas

# OVHcloud's chain of chords (57 tasks), then a sum that shows results flowing.
workflow = chain([
    noop.s(0),
    chord([noop.s(i) for i in range(10)], noop.s()),
    chord([noop.s(i) for i in range(10)], noop.s()),
    chord([noop.s(i) for i in range(10)], noop.s()),
    chord([noop.s(i) for i in range(10)], noop.s()),
    chord([noop.s(i) for i in range(10)], noop.s()),
    noop.s(),
    chord([add.si(i, i) for i in range(10)], xsum.s()),
])  # fmt: skip

pipeline = from_canvas(workflow, name="ovh")
