"""A poll that never comes true: ``aexec.again`` until ``max_wait`` fails the step."""

import aexec
from aexec import pipeline, step


@step(max_wait=1.5)
def ceph_healthy(cluster: str) -> object:
    return aexec.again(after=0.4, reason=f"{cluster} still degraded")


@step
def remove_node(status: str) -> str:
    return f"{status}; node removed"


@pipeline
def never_ready(cluster: str = "ceph-1") -> object:
    return remove_node(ceph_healthy(cluster))
