"""Sub-pipelines: call a ``@pipeline`` inside another to reuse it; its steps are inlined
under a key prefix (``replace.drain``, ``replace_2.drain``, or ``.alias("name")``).

OVHcloud's hardware replacement, one node after another, built from one reusable
pipeline per node:

    python -m aexec run examples/sub_pipelines.py -P replace_all -p nodes='["osd-1", "osd-2"]'

With ``run_as_child=True`` each node's replacement is a run of its own, a child of this
one (its own retries and cancellation; ``runs show`` links both ways):

    python -m aexec run examples/sub_pipelines.py -P replace_as_children -p nodes='["a", "b"]'
"""

from aexec import pipeline, step


@step
def drain(node: str, after: object = None) -> str:
    return f"{node} drained"


@step
def swap(drained: str) -> str:
    return drained.replace("drained", "replaced")


@step
def rejoin(replaced: str) -> str:
    return replaced.replace("replaced", "back in the cluster")


@pipeline
def replace(node: str, after: object = None) -> object:
    """Replace one node's hardware (after ``after``, the previous node's result)."""
    return rejoin(swap(drain(node, after)))


@step
def report(results: list[str]) -> str:
    return "; ".join(results)


@pipeline
def replace_all(nodes: list[str] | None = None) -> object:
    done: list[object] = []
    previous = None
    for node in nodes or ["osd-1"]:
        previous = replace.alias(node)(node, previous)  # one node at a time: osd-1.drain, ...
        done.append(previous)
    return report(done)


@pipeline
def replace_as_children(nodes: list[str] | None = None) -> object:
    done: list[object] = []
    previous = None
    for node in nodes or ["osd-1"]:
        previous = replace.alias(node)(node, previous, run_as_child=True)  # a child run each
        done.append(previous)
    return report(done)
