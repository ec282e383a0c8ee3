"""OVHcloud's two Celery workflows ("Doing BIG automation with Celery"), written as in the
article with ``aexec.canvas``, aexec steps in place of Celery tasks.

    python -m aexec run examples/ovh_canvas.py -P chain_of_chords     # 57 steps
    python -m aexec run examples/ovh_canvas.py -P nested_graph        # 23 steps
    python -m aexec run examples/ovh_canvas.py -P big -p n=1000       # 11,002 steps

``noop`` returns True, as in the article; a chord's body gets the list of its header's
results and a chain passes each result on as the next task's first argument.
"""

from aexec import pipeline, step
from aexec.canvas import chain, chord, group, wire
from aexec.canvas import pipeline as canvas_pipeline


@step
def noop(*args: object, **kwargs: object) -> bool:
    # Task accepts any arguments and does nothing
    return True


# A few chords chained together (57 tasks in total)
workflow = chain([
    noop.s(0),
    chord([noop.s(i) for i in range(10)], noop.s()),
    chord([noop.s(i) for i in range(10)], noop.s()),
    chord([noop.s(i) for i in range(10)], noop.s()),
    chord([noop.s(i) for i in range(10)], noop.s()),
    chord([noop.s(i) for i in range(10)], noop.s()),
    noop.s()
])  # fmt: skip
chain_of_chords = canvas_pipeline(workflow, name="chain_of_chords")

# More complex graph structure built from chains and groups (23 tasks in total)
# | is 'chain' operator in celery
workflow = (
    group(
        group(
            group([noop.s() for i in range(5)]),
            chain([noop.s() for i in range(5)])
        ) |
        noop.s() |
        group([noop.s() for i in range(5)]) |
        noop.s(),
        chain([noop.s() for i in range(5)])
    ) |
    noop.s()
)  # fmt: skip
nested_graph = canvas_pipeline(workflow, name="nested_graph")


@pipeline
def big(n: int = 1000) -> object:
    """A chain of ``n`` chords of 10 (11,002 steps for n=1000), built in the pipeline body."""
    return wire(
        chain(
            [
                noop.s(0),
                *(chord([noop.s(i) for i in range(10)], noop.s()) for _ in range(n)),
                noop.s(),
            ]
        )
    )
