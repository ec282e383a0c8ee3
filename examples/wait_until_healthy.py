"""OVHcloud's "wait until Ceph is healthy" as a durable poll: the step checks once and
asks to run again later; the coordinator keeps the timer (surviving a takeover), and no
worker waits meanwhile.  ``max_wait`` fails the step if the cluster never gets healthy.

    python -m aexec run examples/wait_until_healthy.py -p checks=3
    python -m aexec run examples/wait_until_healthy.py -p checks=3 -p every=30
    # meanwhile: python -m aexec runs show RUN_ID  ->  ceph_healthy  retrying ... waiting: ...

The cluster's health is simulated by a file counting the checks (under AEXEC_HOME).
"""

import os
from pathlib import Path

import aexec
from aexec import pipeline, step


def _counter(run_id: str) -> Path:
    home = Path(os.environ.get("AEXEC_HOME", ".aexec"))
    home.mkdir(parents=True, exist_ok=True)
    return home / f"ceph-checks-{run_id}"


@step
def reweight(node: str) -> str:
    return f"{node} weight 0"


@step(max_wait=60.0)
def ceph_healthy(previous: str, checks: int, every: float) -> object:
    counter = _counter(aexec.current().run_id)
    seen = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(seen))
    if seen < checks:
        return aexec.again(after=every, reason=f"ceph not healthy yet (check {seen})")
    return f"{previous}; healthy after {seen} checks"


@step
def remove_node(status: str, node: str) -> str:
    return f"{status}; {node} removed"


@pipeline
def replace_node(node: str = "osd-7", checks: int = 3, every: float = 0.2) -> object:
    return remove_node(ceph_healthy(reweight(node), checks, every), node)
